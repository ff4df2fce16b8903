//! The retained flood: a registered device publishes QoS 1 retained state reports under its
//! own tree, each to a new name (`devices/{id}/state/f{n}`), at a steady rate with up to
//! [`WINDOW`] awaiting PUBACK, so that the retained store and the twin's reported state grow.

use std::time::Duration;

use client::{Publish, QoS};
use futures_util::{StreamExt, stream::FuturesUnordered};
use proto::payload::StateReport;
use tokio_util::sync::CancellationToken;

use super::Target;
use crate::soak::{
    device::{self, DeviceSpec, client_error_label, now_ms},
    net::ABUSER_ADDRS,
    tally::Tally,
};

const WINDOW: usize = 64;

pub async fn abuser(
    target: Target,
    spec: DeviceSpec,
    slot: usize,
    rate: f64,
    payload_size: usize,
    tally: Tally,
    stop: CancellationToken,
) {
    let options = device::device_options(&spec);
    let from = ABUSER_ADDRS.nth(slot);
    let filler = "x".repeat(payload_size.saturating_sub(40));
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            c = device::connect_mqtts(from, target.mqtts, &target.tls, &options) => c,
        };
        let (client, _events) = match connected {
            Ok(c) => c,
            Err(label) => {
                tally.add(format!("reconnect refused: {label}"));
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut pending = FuturesUnordered::new();
        let closed = loop {
            tokio::select! {
                () = stop.cancelled() => break false,
                Some(result) = pending.next() => match result {
                    Ok(()) => tally.add("PUBACK success"),
                    Err(err) => {
                        tally.add(format!("PUBACK {}", client_error_label(&err)));
                        if matches!(err, client::ClientError::Disconnected) {
                            break true;
                        }
                    }
                },
                _ = tick.tick(), if pending.len() < WINDOW => {
                    n += 1;
                    let state = StateReport {
                        value: serde_json::Value::String(filler.clone()),
                        ts: now_ms(),
                        cmd: None,
                    };
                    let mut message = Publish::new(
                        proto::topics::state(&spec.id, &format!("f{n}")),
                        serde_json::to_vec(&state).unwrap_or_default(),
                    );
                    message.qos = QoS::AtLeastOnce;
                    message.retain = true;
                    match client.publish_message(message).await {
                        Ok(delivery) => pending.push(delivery),
                        Err(_) => break true,
                    }
                }
            }
        };
        if closed {
            tally.add("connection closed");
        }
    }
}
