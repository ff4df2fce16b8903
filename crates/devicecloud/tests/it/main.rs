//! Integration tests of the `devicecloud` binary. One module per area; add yours with one line.

mod cli_admin;
