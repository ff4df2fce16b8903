//! End-to-end tests of the real `devicecloud` binary (see `support` for how it is found).

mod support;

mod broker;
mod server_cli;
mod tls_reload;
