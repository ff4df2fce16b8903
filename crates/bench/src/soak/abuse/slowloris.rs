//! Slowloris: connections that send one byte every few seconds and never finish, on the MQTT
//! and the HTTPS port, both before TLS (a ClientHello dripped) and after it (an MQTT CONNECT or
//! HTTP headers dripped). A slot whose connection the server closes opens a new one from the
//! next address, so the pressure stays on for the whole run.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::BytesMut;
use client::Io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::Target;
use crate::soak::{
    net::{self, SLOW_ADDRS},
    tally::Tally,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowKind {
    /// MQTT port, a TLS ClientHello one byte at a time.
    MqttsHandshake,
    /// MQTT port, TLS done, an MQTT CONNECT one byte at a time.
    MqttsConnect,
    /// HTTPS port, a TLS ClientHello one byte at a time.
    HttpsHandshake,
    /// HTTPS port, TLS done, endless HTTP request headers one byte at a time.
    HttpsHeaders,
}

impl SlowKind {
    pub const ALL: [SlowKind; 4] = [
        SlowKind::MqttsHandshake,
        SlowKind::MqttsConnect,
        SlowKind::HttpsHandshake,
        SlowKind::HttpsHeaders,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SlowKind::MqttsHandshake => "slowloris MQTT port, TLS ClientHello",
            SlowKind::MqttsConnect => "slowloris MQTT port, CONNECT after TLS",
            SlowKind::HttpsHandshake => "slowloris HTTPS port, TLS ClientHello",
            SlowKind::HttpsHeaders => "slowloris HTTPS port, headers after TLS",
        }
    }

    fn completes_tls(self) -> bool {
        matches!(self, SlowKind::MqttsConnect | SlowKind::HttpsHeaders)
    }

    /// The bytes to drip. For HTTP headers this is the request line and one header; after it,
    /// [`next_byte`] repeats the header forever.
    pub fn payload(self, tls: &Arc<rustls::ClientConfig>) -> anyhow::Result<Vec<u8>> {
        Ok(match self {
            SlowKind::MqttsHandshake | SlowKind::HttpsHandshake => net::client_hello(tls)?,
            SlowKind::MqttsConnect => {
                let mut connect = codec::Connect::new(codec::ProtocolVersion::V5, "slowloris");
                connect.username = Some("admin".into());
                connect.password = Some(bytes::Bytes::from_static(b"slow"));
                let mut out = BytesMut::new();
                codec::encode(
                    &codec::Packet::Connect(Box::new(connect)),
                    codec::ProtocolVersion::V5,
                    &mut out,
                )?;
                out.to_vec()
            }
            SlowKind::HttpsHeaders => {
                b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a\r\n".to_vec()
            }
        })
    }
}

/// The `i`-th byte to send; `None` once a finite payload is used up (then the slot only waits).
fn next_byte(kind: SlowKind, payload: &[u8], i: usize) -> Option<u8> {
    if let Some(&b) = payload.get(i) {
        return Some(b);
    }
    if kind == SlowKind::HttpsHeaders {
        const HEADER: &[u8] = b"X-Slow: a\r\n";
        return Some(HEADER[(i - payload.len()) % HEADER.len()]);
    }
    None
}

/// What the slots of one kind went through.
#[derive(Debug, Default)]
pub struct SlowStats {
    pub opened: AtomicU64,
    /// How each connection ended ("closed by the server within 10 s", "open at the end", ...).
    pub outcomes: Tally,
    /// Lifetimes of the connections the server closed.
    pub lifetimes: Mutex<Vec<Duration>>,
    /// Bytes the server answered with before closing (an HTTP 408, a TLS alert).
    pub answered: AtomicU64,
}

impl SlowStats {
    /// (median, max) lifetime of the connections the server closed.
    pub fn lifetime_summary(&self) -> Option<(Duration, Duration)> {
        let mut all = self
            .lifetimes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if all.is_empty() {
            return None;
        }
        all.sort_unstable();
        Some((all[all.len() / 2], all[all.len() - 1]))
    }
}

pub async fn slot(
    target: Target,
    kind: SlowKind,
    payload: Arc<Vec<u8>>,
    drip: Duration,
    stats: Arc<SlowStats>,
    stop: CancellationToken,
) {
    let to = match kind {
        SlowKind::MqttsHandshake | SlowKind::MqttsConnect => target.mqtts,
        SlowKind::HttpsHandshake | SlowKind::HttpsHeaders => target.https,
    };
    while !stop.is_cancelled() {
        let from = SLOW_ADDRS.next();
        let connected: std::io::Result<Box<dyn Io>> = tokio::select! {
            () = stop.cancelled() => return,
            c = async {
                if kind.completes_tls() {
                    Ok(Box::new(net::tls_from(from, to, &target.tls, Duration::from_secs(30)).await?) as Box<dyn Io>)
                } else {
                    Ok(Box::new(net::tcp_from(from, to).await?) as Box<dyn Io>)
                }
            } => c,
        };
        let stream = match connected {
            Ok(s) => s,
            Err(err) => {
                stats
                    .outcomes
                    .add(format!("could not open: {}", net::io_label(&err)));
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(drip) => continue,
                }
            }
        };
        stats.opened.fetch_add(1, Ordering::Relaxed);
        let opened = Instant::now();
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut tick = tokio::time::interval(drip);
        let mut sent = 0usize;
        let mut buf = [0u8; 512];
        let closed = loop {
            tokio::select! {
                () = stop.cancelled() => break false,
                read = reader.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break true,
                    Ok(n) => { stats.answered.fetch_add(n as u64, Ordering::Relaxed); }
                },
                _ = tick.tick() => {
                    if let Some(b) = next_byte(kind, &payload, sent) {
                        if writer.write_all(&[b]).await.is_err() || writer.flush().await.is_err() {
                            break true;
                        }
                        sent += 1;
                    }
                }
            }
        };
        if closed {
            let lifetime = opened.elapsed();
            stats
                .lifetimes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(lifetime);
            stats.outcomes.add("closed by the server");
        } else {
            stats.outcomes.add("still open at the end of the run");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_drip_never_ends_and_finite_payloads_do() {
        let payload = b"GET / HTTP/1.1\r\n";
        let n = payload.len();
        assert_eq!(next_byte(SlowKind::HttpsHeaders, payload, 0), Some(b'G'));
        assert_eq!(next_byte(SlowKind::HttpsHeaders, payload, n), Some(b'X'));
        assert_eq!(
            next_byte(SlowKind::HttpsHeaders, payload, n + 11 * 1000),
            Some(b'X')
        );
        assert_eq!(next_byte(SlowKind::MqttsConnect, payload, n), None);
    }

    #[test]
    fn payloads_are_real_protocol_openings() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let (_, config) = crate::soak::net::tls_connector(&ca_pem).unwrap();
        let hello = SlowKind::MqttsHandshake.payload(&config).unwrap();
        assert_eq!(hello[0], 0x16, "a TLS handshake record");
        let connect = SlowKind::MqttsConnect.payload(&config).unwrap();
        assert_eq!(connect[0], 0x10, "an MQTT CONNECT");
    }
}
