//! File helpers shared by every devicecloud crate that writes or reads files: replacing a file
//! atomically ([`write_atomic`]) and locating a TOML error by line and key ([`toml_location`]).
//! One copy of each, so that a fix (O_EXCL, directory fsync, a better key guess) reaches every
//! caller.

mod atomic;
mod toml_location;

pub use atomic::{Durability, write_atomic, write_atomic_with};
pub use toml_location::{TomlLocation, toml_location};
