//! The devicecloud protocol: the topic convention (docs/topics.md), the JSON payloads spoken
//! on those topics, the ACL rule engine derived from them, and the device bundle file format.
//!
//! Pure: no I/O except [`bundle::Bundle::load`] / [`bundle::Bundle::save`].

pub mod acl;
pub mod bundle;
pub mod payload;
pub mod topics;
