//! End-to-end tests of the real `devicecloud` binary (see `support` for how it is found).

mod support;

mod broker;
mod tls_reload;
