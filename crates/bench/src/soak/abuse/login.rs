//! The login flood: wrong passwords for `admin` over HTTPS (`POST /api/v1/login`), and MQTT
//! CONNECTs with bad passwords for `admin`, for unknown users and for real device ids. Every
//! attempt comes from the next address of a 4,096-address pool, as from a botnet, so a
//! per-address backoff alone does not stop it.

use std::time::Duration;

use bytes::Bytes;
use client::{ClientOptions, ProtocolVersion};
use tokio_util::sync::CancellationToken;

use super::Target;
use crate::soak::{
    device::{self, client_error_label},
    net::{self, FLOOD_ADDRS},
    tally::Tally,
};

/// Time allowed for one attempt, from TCP connect to the answer.
const ATTEMPT_WITHIN: Duration = Duration::from_secs(30);

fn paced(pace: Duration, worker: usize) -> tokio::time::Interval {
    // Workers start spread over one pace period, not all at once.
    let offset = device::spread(worker, pace);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, pace);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

pub async fn http_worker(
    target: Target,
    worker: usize,
    pace: Duration,
    tally: Tally,
    stop: CancellationToken,
) {
    let mut tick = paced(pace, worker);
    let mut attempt = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        attempt += 1;
        let body = format!(r#"{{"username":"admin","password":"wrong-{worker}-{attempt}"}}"#);
        let answer = tokio::select! {
            () = stop.cancelled() => return,
            answer = net::https_once(
                FLOOD_ADDRS.next(),
                target.https,
                &target.tls,
                "POST",
                "/api/v1/login",
                &body,
                ATTEMPT_WITHIN,
            ) => answer,
        };
        match answer {
            Ok(status) => tally.add(format!("HTTP {status}")),
            Err(err) => tally.add(net::io_label(&err)),
        }
    }
}

pub async fn mqtt_worker(
    target: Target,
    worker: usize,
    pace: Duration,
    tally: Tally,
    stop: CancellationToken,
) {
    let mut tick = paced(pace, worker);
    let mut attempt = 0usize;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        attempt += 1;
        // Known user, unknown user, real device with a wrong token: each should cost the same.
        let username = match attempt % 3 {
            0 => "admin".to_string(),
            1 => format!("nobody-{worker}-{attempt}"),
            _ => target.device_ids[(worker * 7919 + attempt) % target.device_ids.len().max(1)]
                .clone(),
        };
        let mut options = ClientOptions::new(
            "mqtts://127.0.0.1:8883",
            format!("flood-{worker}-{attempt}"),
        );
        options.version = ProtocolVersion::V5;
        options.username = Some(username);
        options.password = Some(Bytes::from(format!("wrong-{attempt}").into_bytes()));
        options.keep_alive = 30;
        let answer = tokio::select! {
            () = stop.cancelled() => return,
            answer = async {
                let stream = net::tls_from(FLOOD_ADDRS.next(), target.mqtts, &target.tls, ATTEMPT_WITHIN)
                    .await
                    .map_err(|e| net::io_label(&e).to_string())?;
                match tokio::time::timeout(ATTEMPT_WITHIN, client::connect_stream(stream, &options)).await {
                    Err(_) => Err("no CONNACK (timeout)".to_string()),
                    Ok(Err(err)) => Err(client_error_label(&err)),
                    Ok(Ok((client, _events))) => {
                        let _ = client.disconnect().await;
                        Ok(())
                    }
                }
            } => answer,
        };
        match answer {
            Ok(()) => tally.add("ACCEPTED with a wrong password (!)"),
            Err(label) => tally.add(label),
        }
    }
}
