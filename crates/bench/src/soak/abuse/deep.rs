//! Deep filters: a registered device, with its own valid credentials, subscribes to a filter
//! of tens of thousands of levels under its own `devices/{id}/set/` (issue 8: about 30,000
//! levels overflowed the server's stack), again every few seconds. When the attacks stop, the
//! abusers stay connected (their subscriptions in place) until released: the legitimate
//! traffic is verified first, and what their leaving does to the server is seen after that.

use std::time::Duration;

use client::{QoS, SubscribeOptions, SubscribeProperties, Subscription};
use tokio_util::sync::CancellationToken;

use super::Target;
use crate::soak::{
    device::{self, DeviceSpec, client_error_label, code_label},
    net::ABUSER_ADDRS,
    tally::Tally,
};

/// `devices/{id}/set/` followed by `a/a/...` up to `levels` levels in all.
pub fn deep_filter(id: &str, levels: usize) -> String {
    let prefix = proto::topics::device_commands(id);
    let prefix = prefix.trim_end_matches('#');
    // The prefix ends with '/': it holds as many complete levels as slashes.
    let extra = levels.saturating_sub(prefix.matches('/').count()).max(1);
    let mut filter = String::with_capacity(prefix.len() + 2 * extra);
    filter.push_str(prefix);
    filter.push_str(&"a/".repeat(extra - 1));
    filter.push('a');
    filter
}

/// How deep, how often.
#[derive(Debug, Clone, Copy)]
pub struct DeepShape {
    pub levels: usize,
    pub every: Duration,
}

pub async fn abuser(
    target: Target,
    spec: DeviceSpec,
    slot: usize,
    DeepShape { levels, every }: DeepShape,
    tally: Tally,
    stop: CancellationToken,
    release: CancellationToken,
) {
    let options = device::device_options(&spec);
    let filter = deep_filter(&spec.id, levels);
    let from = ABUSER_ADDRS.nth(slot);
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
                    () = tokio::time::sleep(every) => continue,
                }
            }
        };
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    release.cancelled().await;
                    drop(client);
                    return;
                }
                _ = tick.tick() => {}
            }
            let subscription = Subscription {
                filter: filter.clone(),
                options: SubscribeOptions::qos(QoS::AtLeastOnce),
            };
            let answer = tokio::select! {
                () = stop.cancelled() => {
                    release.cancelled().await;
                    drop(client);
                    return;
                }
                a = tokio::time::timeout(
                    Duration::from_secs(30),
                    client.subscribe_many(vec![subscription], SubscribeProperties::default()),
                ) => a,
            };
            match answer {
                Ok(Ok(codes)) => {
                    let code = codes.first().copied();
                    tally.add(code.map_or("empty SUBACK".to_string(), |c| {
                        format!("SUBACK {}", code_label(c))
                    }));
                }
                Ok(Err(err)) => {
                    tally.add(format!("connection closed ({})", client_error_label(&err)));
                    break;
                }
                Err(_) => {
                    tally.add("no SUBACK within 30 s");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deep_filter_has_the_requested_levels_under_the_device_commands() {
        let filter = deep_filter("abuse-deep-0", 30_000);
        assert!(filter.starts_with("devices/abuse-deep-0/set/a/a/"));
        assert_eq!(filter.split('/').count(), 30_000);
        assert!(filter.len() < 65_535, "fits an MQTT string");
        assert_eq!(deep_filter("d", 1), "devices/d/set/a");
    }
}
