//! Integration tests of the `devicecloud` binary, run as a real process
//! (`CARGO_BIN_EXE_devicecloud`). One module per area; add yours with one line.

mod support;

mod broker;
mod cli_admin;
mod data_dir;
mod server_cli;
mod tls_reload;
mod up;
