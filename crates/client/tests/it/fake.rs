//! A minimal MQTT server: enough of a broker to exercise the client's flows, and to observe
//! exactly what the client sends.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use codec::{
    Ack, ConnAck, Disconnect, MqttCodec, Packet, QoS, ReasonCode, SubAck, UnsubAck, topic,
};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::mpsc,
};
use tokio_util::codec::Framed;

#[derive(Clone)]
pub struct Config {
    pub connack: ConnAck,
    pub answer_pings: bool,
    /// Hold PUBACKs until this many QoS 1 publishes are outstanding, then ack them all.
    pub ack_batch: usize,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            connack: ConnAck::new(ReasonCode::Success, false),
            answer_pings: true,
            ack_batch: 1,
            tls: None,
        }
    }
}

/// What the fake observed.
#[derive(Debug)]
pub enum Seen {
    Packet(Box<Packet>),
    /// More QoS 1/2 publishes were unacknowledged at once than the CONNACK allowed.
    ReceiveMaximumExceeded(usize),
}

/// Starts the fake on 127.0.0.1:0; returns its port and what it sees from clients.
pub async fn start(config: Config) -> (u16, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (config, tx) = (config.clone(), tx.clone());
            tokio::spawn(async move {
                match config.tls.clone() {
                    Some(tls) => {
                        if let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await {
                            serve(stream, config, tx).await;
                        }
                    }
                    None => serve(tcp, config, tx).await,
                }
            });
        }
    });
    (port, rx)
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    config: Config,
    seen: mpsc::UnboundedSender<Seen>,
) {
    let mut framed = Framed::new(stream, MqttCodec::server(1 << 20));
    let mut subscriptions: Vec<(String, QoS)> = Vec::new();
    let mut unacked: Vec<u16> = Vec::new();
    let mut inbound_qos2: HashSet<u16> = HashSet::new();
    let mut outbound: HashMap<u16, QoS> = HashMap::new();
    let mut next_id = 0u16;
    let receive_maximum = config.connack.properties.receive_maximum.map(usize::from);
    while let Some(Ok(packet)) = framed.next().await {
        let _ = seen.send(Seen::Packet(Box::new(packet.clone())));
        let mut replies = Vec::new();
        match packet {
            Packet::Connect(_) => {
                replies.push(Packet::ConnAck(config.connack.clone()));
                if config.connack.reason_code.is_error() {
                    let _ = framed.send(replies.remove(0)).await;
                    return;
                }
            }
            Packet::Subscribe(sub) => {
                let codes = sub
                    .subscriptions
                    .iter()
                    .map(|s| {
                        if s.filter.starts_with("forbidden") {
                            ReasonCode::NotAuthorized
                        } else {
                            subscriptions.push((s.filter.clone(), s.options.qos));
                            ReasonCode::granted(s.options.qos)
                        }
                    })
                    .collect();
                replies.push(Packet::SubAck(SubAck {
                    packet_id: sub.packet_id,
                    reason_codes: codes,
                    properties: Default::default(),
                }));
            }
            Packet::Unsubscribe(u) => {
                subscriptions.retain(|(f, _)| !u.filters.contains(f));
                let codes = if framed.codec().version().is_some_and(|v| v.is_v5()) {
                    vec![ReasonCode::Success; u.filters.len()]
                } else {
                    vec![]
                };
                replies.push(Packet::UnsubAck(UnsubAck {
                    packet_id: u.packet_id,
                    reason_codes: codes,
                    properties: Default::default(),
                }));
            }
            Packet::Publish(p) => {
                if &*p.topic == "kick" {
                    let _ = framed
                        .send(Packet::Disconnect(Disconnect::new(
                            ReasonCode::AdministrativeAction,
                        )))
                        .await;
                    return;
                }
                if &*p.topic == "stray" {
                    // Acknowledgements for ids the client never used.
                    replies.push(Packet::PubAck(Ack::new(999)));
                    replies.push(Packet::PubComp(Ack::new(998)));
                    replies.push(Packet::PubRec(Ack::new(997)));
                }
                if &*p.topic == "reject" && p.qos == QoS::AtLeastOnce {
                    let mut ack = Ack::new(p.packet_id.unwrap());
                    ack.reason_code = ReasonCode::NotAuthorized;
                    replies.push(Packet::PubAck(ack));
                } else {
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => {
                            unacked.push(id);
                            if let Some(max) = receive_maximum
                                && unacked.len() > max
                            {
                                let _ = seen.send(Seen::ReceiveMaximumExceeded(unacked.len()));
                            }
                            if unacked.len() >= config.ack_batch {
                                replies.extend(
                                    unacked.drain(..).map(|id| Packet::PubAck(Ack::new(id))),
                                );
                            }
                        }
                        (QoS::ExactlyOnce, Some(id)) => {
                            inbound_qos2.insert(id);
                            replies.push(Packet::PubRec(Ack::new(id)));
                        }
                        _ => {}
                    }
                    for (filter, max_qos) in &subscriptions {
                        if topic::matches(filter, &p.topic) {
                            let mut out = p.clone();
                            out.dup = false;
                            out.retain = false;
                            out.qos = p.qos.min(*max_qos);
                            out.packet_id = None;
                            if out.qos != QoS::AtMostOnce {
                                next_id += 1;
                                out.packet_id = Some(next_id);
                                outbound.insert(next_id, out.qos);
                            }
                            replies.push(Packet::Publish(out.clone()));
                            if out.qos == QoS::ExactlyOnce {
                                // Re-send with DUP: the client must deliver it only once.
                                out.dup = true;
                                replies.push(Packet::Publish(out));
                            }
                        }
                    }
                }
            }
            Packet::PubRel(a) => {
                inbound_qos2.remove(&a.packet_id);
                replies.push(Packet::PubComp(Ack::new(a.packet_id)));
            }
            Packet::PubRec(a) => {
                replies.push(Packet::PubRel(Ack::new(a.packet_id)));
            }
            Packet::PubAck(a) | Packet::PubComp(a) => {
                outbound.remove(&a.packet_id);
            }
            Packet::PingReq if config.answer_pings => replies.push(Packet::PingResp),
            Packet::Disconnect(_) => return,
            _ => {}
        }
        for reply in replies {
            if framed.feed(reply).await.is_err() {
                return;
            }
        }
        if framed.flush().await.is_err() {
            return;
        }
    }
}

/// Waits for the first observation matching `f`, skipping others.
pub async fn expect<T>(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    mut f: impl FnMut(&Seen) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + crate::WAIT;
    loop {
        let item = tokio::time::timeout_at(deadline, seen.recv())
            .await
            .expect("timed out waiting for the fake server to see something")
            .expect("fake server gone");
        if let Some(t) = f(&item) {
            return t;
        }
    }
}
