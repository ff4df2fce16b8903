//! Broker integration tests: a real broker on 127.0.0.1:0 spoken to with raw MQTT packets.
//! Tests are named after the normative statement (MQTT 5.0 numbering unless noted) they check.

mod helpers;

// Interoperability with third-party clients (H3).
mod interop;
mod interop_auth;
mod interop_flow;
mod interop_mosquitto;
mod interop_tls;
mod interop_will;
mod interop_ws;

mod acl;
mod conformance;
mod connect;
mod hostile;
mod limits;
mod local;
mod persistence;
mod publish;
mod retained;
mod session;
mod v5;
