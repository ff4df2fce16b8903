//! Client tests against a small in-test MQTT server (`fake`) built on the codec.

mod broker;
mod fake;
mod flows;
mod tls;
mod url;

use std::time::Duration;

use client::Event;
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(5);

/// The next event, or a panic after [`WAIT`].
pub async fn next_event(events: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("event channel closed")
}
