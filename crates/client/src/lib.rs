//! An async MQTT 3.1.1 / 5.0 client on our [`codec`], for the device agent, the benchmark,
//! the bridge and tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client::ClientError> {
//! use client::{ClientOptions, Event, QoS};
//! let options = ClientOptions::new("mqtt://127.0.0.1:1883", "demo");
//! let (client, mut events) = client::connect(&options).await?;
//! client.subscribe("devices/+/status", QoS::AtLeastOnce).await?;
//! client.publish("devices/demo/status", "online", QoS::AtLeastOnce, true).await?; // PUBACK'd
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Publish(message) => println!("{}: {:?}", message.topic, message.payload),
//!         Event::Disconnected(reason) => { println!("gone: {reason:?}"); break }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! One background task per connection owns the socket: it answers the broker's QoS 1/2
//! flows (PUBACK, PUBREC/PUBCOMP, delivering QoS 2 once), pings per keep alive, and respects
//! the broker's Receive Maximum by queueing publishes beyond it. A refused CONNECT is
//! [`ClientError::Refused`] with the (v5, or v3-mapped) reason code.
//!
//! There is no automatic reconnect and no persistence of in-flight messages: when the
//! connection ends, [`Event::Disconnected`] is the last event and pending operations fail
//! with [`ClientError::Disconnected`]; call [`connect`] again with the same options.
//! Consume the events: when the application falls behind by twice
//! [`ClientOptions::event_capacity`], the connection stops reading from the socket (which
//! also stops PUBACKs for our own QoS 1/2 publishes). Publishing from the event handler is
//! fine; awaiting a QoS 1/2 [`Delivery`] there is fine too as long as the handler keeps up.

mod client;
mod connection;
mod error;
mod options;
mod tls;

pub use client::{Client, Delivery, Events, Io, Session, connect, connect_stream};
pub use codec::{
    ByteStr, Disconnect, LastWill, ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode,
    SubscribeOptions, SubscribeProperties, Subscription, WillProperties,
};
pub use connection::{DisconnectReason, Event};
pub use error::ClientError;
pub use options::{BrokerUrl, ClientOptions};
pub use tls::tls_config;
