//! `$SYS/broker/...` topics, published (retained) every `sys_interval`, like mosquitto:
//! version, uptime, clients/connected, messages/received|sent|dropped, bytes/received|sent,
//! subscriptions/count, retained messages/count. They are not persisted and not counted in
//! the message statistics they report.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use bytes::Bytes;
use codec::{ByteStr, PublishProperties, QoS};

use crate::{broker::Inner, message::Publication};

pub const VERSION: &str = concat!("devicecloud-broker ", env!("CARGO_PKG_VERSION"));

pub fn start(inner: &Arc<Inner>) {
    let period = inner.config.sys_interval;
    if period.is_zero() {
        return;
    }
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            publish_all(&inner);
        }
    });
}

fn publish_all(inner: &Inner) {
    let c = &inner.counters;
    let values: [(&str, String); 11] = [
        ("version", VERSION.to_string()),
        (
            "uptime",
            format!("{} seconds", inner.started.elapsed().as_secs()),
        ),
        (
            "clients/connected",
            c.clients_connected.load(Relaxed).to_string(),
        ),
        (
            "messages/received",
            c.messages_received.load(Relaxed).to_string(),
        ),
        ("messages/sent", c.messages_sent.load(Relaxed).to_string()),
        (
            "messages/dropped",
            c.messages_dropped.load(Relaxed).to_string(),
        ),
        ("bytes/received", c.bytes_received.load(Relaxed).to_string()),
        ("bytes/sent", c.bytes_sent.load(Relaxed).to_string()),
        (
            "subscriptions/count",
            inner.router.subscription_count().to_string(),
        ),
        (
            "retained messages/count",
            inner.router.retained_count().to_string(),
        ),
        ("clients/total", inner.lock_sessions().len().to_string()),
    ];
    for (name, value) in values {
        let topic = ByteStr::from(format!("$SYS/broker/{name}"));
        let msg = Publication::new(
            topic,
            Bytes::from(value),
            QoS::AtMostOnce,
            true,
            PublishProperties::default(),
            0,
        );
        inner.router.publish(Arc::new(msg));
    }
}
