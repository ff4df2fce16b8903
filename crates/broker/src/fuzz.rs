//! Stateful fuzzing: a script of packets from several clients against one in-process broker,
//! decoded from arbitrary bytes, with the broker's invariants checked after every step. Used
//! by `fuzz/fuzz_targets/broker.rs` (cargo-fuzz) and by a proptest in this module, so both
//! run the same generator.
//!
//! Invariants (a violation panics):
//! - the broker never panics, and answers every well-framed client (a PINGREQ gets its
//!   PINGRESP or the connection is closed) within a generous deadline;
//! - every packet the broker sends decodes (it never sends malformed packets);
//! - no delivery outside the ACL: client 0 may only read and write `allowed/#`, and what it
//!   tries to publish elsewhere reaches nobody;
//! - no client ever has more unacknowledged QoS 1/2 deliveries than its Receive Maximum;
//! - memory stays bounded: every session queue is within `max_queued_messages` /
//!   `max_queued_bytes`.
//!
//! Only compiled for tests and with the `fuzzing` feature.

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use codec::{
    Ack, Connect, Disconnect, Packet, ProtocolVersion, Publish, QoS, Subscribe, SubscribeOptions,
    Subscription, Unsubscribe,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf},
    sync::mpsc,
};

use crate::{
    Broker, BrokerConfig, ConnInfo, Limits,
    auth::{Identity, Permissions, Transport},
};

const CLIENTS: usize = 3;
/// Client 0's payload when it publishes outside its ACL: must never be delivered.
const FORBIDDEN: &[u8] = b"forbidden";
const TOPICS: [&str; 5] = [
    "allowed/a",
    "allowed/b",
    "secret/x",
    "$SYS/x",
    "allowed/c/d",
];
const FILTERS: [&str; 7] = [
    "allowed/#",
    "allowed/+",
    "#",
    "secret/#",
    "$share/g/allowed/a",
    "$share/g/#",
    "+/+/+",
];
/// How long the broker may take to answer a ping (a liveness bug if exceeded).
const ANSWER: Duration = Duration::from_secs(10);

/// Client 0's permissions.
#[derive(Debug)]
struct Limited;

impl Permissions for Limited {
    fn may_publish(&self, topic: &str) -> bool {
        topic.starts_with("allowed/")
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        filter.starts_with("allowed/")
    }
}

/// Reads script bytes; 0 once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte()) % from.len()]
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Our side of one connection.
struct Client {
    index: usize,
    version: ProtocolVersion,
    writer: WriteHalf<DuplexStream>,
    /// Packets the broker sent, decoded by a reader task; closed at EOF.
    packets: mpsc::UnboundedReceiver<Packet>,
    receive_maximum: u16,
    /// Deliveries not yet acknowledged: (packet id, QoS, PUBREL seen).
    unacked: Vec<(u16, QoS, bool)>,
    next_pid: u16,
    /// Server-to-client topic aliases seen on this connection.
    aliases: std::collections::HashMap<u16, String>,
    /// The reader task: aborting it drops the read half, so that dropping the client closes
    /// the stream and the broker sees EOF.
    reading: tokio::task::AbortHandle,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reading.abort();
    }
}

impl Client {
    async fn send(&mut self, p: &Packet) -> bool {
        let mut buf = BytesMut::new();
        if codec::encode(p, self.version, &mut buf).is_err() {
            return true;
        }
        self.writer.write_all(&buf).await.is_ok()
    }

    fn pid(&mut self) -> u16 {
        self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
        self.next_pid
    }

    /// Checks one packet from the broker against the invariants and tracks acks.
    fn observe(&mut self, p: &Packet) {
        if let Packet::Publish(publish) = p {
            let topic = match publish.properties.topic_alias {
                Some(alias) if publish.topic.is_empty() => self
                    .aliases
                    .get(&alias)
                    .unwrap_or_else(|| panic!("topic alias {alias} used before it was set"))
                    .clone(),
                Some(alias) => {
                    self.aliases.insert(alias, publish.topic.to_string());
                    publish.topic.to_string()
                }
                None => publish.topic.to_string(),
            };
            assert_ne!(
                &publish.payload[..],
                FORBIDDEN,
                "a publish outside client 0's ACL was delivered to client {}",
                self.index
            );
            if self.index == 0 {
                assert!(
                    topic.starts_with("allowed/"),
                    "client 0 received '{topic}' outside its ACL"
                );
            }
            if let Some(pid) = publish.packet_id
                && !self.unacked.iter().any(|u| u.0 == pid)
            {
                self.unacked.push((pid, publish.qos, false));
                assert!(
                    self.unacked.len() <= usize::from(self.receive_maximum),
                    "client {} has {} unacknowledged deliveries, Receive Maximum {} (MQTT-3.3.4-9)",
                    self.index,
                    self.unacked.len(),
                    self.receive_maximum
                );
            }
        }
        if let Packet::PubRel(a) = p
            && let Some(u) = self.unacked.iter_mut().find(|u| u.0 == a.packet_id)
        {
            u.2 = true;
        }
    }

    /// PINGREQ, then every packet up to the PINGRESP. False if the broker closed the
    /// connection.
    async fn round_trip(&mut self) -> bool {
        if !self.send(&Packet::PingReq).await {
            return false;
        }
        loop {
            let next = tokio::time::timeout(ANSWER, self.packets.recv()).await;
            match next.expect("the broker neither answered a PINGREQ nor closed the connection") {
                Some(Packet::PingResp) => return true,
                Some(p) => self.observe(&p),
                None => return false,
            }
        }
    }

    /// Acknowledges the oldest delivery; `wrong` sends the other QoS's ack instead.
    async fn ack_oldest(&mut self, wrong: bool) -> bool {
        let Some(&(pid, qos, released)) = self.unacked.first() else {
            return true;
        };
        let packet = match (qos, released, wrong) {
            (QoS::AtLeastOnce, _, false) | (QoS::ExactlyOnce, false, true) => {
                Packet::PubAck(Ack::new(pid))
            }
            (QoS::ExactlyOnce, false, false) | (QoS::AtLeastOnce, _, true) => {
                Packet::PubRec(Ack::new(pid))
            }
            _ => Packet::PubComp(Ack::new(pid)),
        };
        let done = matches!(
            (&packet, qos),
            (Packet::PubAck(_), QoS::AtLeastOnce) | (Packet::PubComp(_), _)
        );
        if done {
            self.unacked.remove(0);
        }
        self.send(&packet).await
    }
}

fn reader(
    mut half: ReadHalf<DuplexStream>,
    version: ProtocolVersion,
) -> (mpsc::UnboundedReceiver<Packet>, tokio::task::AbortHandle) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        loop {
            loop {
                match codec::decode(&mut buf, Some(version), u32::MAX) {
                    Ok(Some(p)) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => panic!("the broker sent a malformed packet: {e}"),
                }
            }
            match half.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    (rx, task.abort_handle())
}

/// The broker configuration the scripts run against: small bounds, so they are reached.
pub fn config() -> BrokerConfig {
    BrokerConfig {
        sys_interval: Duration::ZERO,
        limits: Limits {
            max_packet_size: 2048,
            receive_maximum: 4,
            max_queued_messages: 8,
            max_queued_bytes: 8 * 1024,
            topic_alias_maximum: 4,
            ..Limits::default()
        },
        ..BrokerConfig::default()
    }
}

/// Runs one script on a fresh broker in a current-thread runtime; returns the broker's
/// counters at the end.
pub fn run(script: &[u8]) -> crate::Stats {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run_async(script))
}

async fn run_async(script: &[u8]) -> crate::Stats {
    let broker = Broker::open(config(), Arc::new(crate::password_file::AnonymousAuth))
        .await
        .expect("broker opens");
    let mut tasks = tokio::task::JoinSet::new();
    let mut clients: Vec<Option<Client>> = (0..CLIENTS).map(|_| None).collect();
    let mut input = Input(script);
    let mut steps = 0;
    while !input.is_empty() && steps < 200 {
        steps += 1;
        let op = input.byte();
        let i = usize::from(op >> 4) % CLIENTS;
        let alive = match (op & 0x0F, clients[i].as_mut()) {
            (0, _) => {
                clients[i] = connect(&broker, &mut tasks, i, &mut input).await;
                match clients[i].as_mut() {
                    Some(c) => c.round_trip().await,
                    None => false,
                }
            }
            (_, None) => continue,
            (1, Some(c)) => {
                let filter = input.pick(&FILTERS);
                let qos = input.pick(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]);
                let pid = c.pid();
                let sub = Subscribe {
                    packet_id: pid,
                    subscriptions: vec![Subscription {
                        filter: filter.into(),
                        options: SubscribeOptions::qos(qos),
                    }],
                    properties: Default::default(),
                };
                c.send(&Packet::Subscribe(sub)).await && c.round_trip().await
            }
            (2..=4, Some(c)) => {
                let topic = input.pick(&TOPICS);
                let qos = input.pick(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]);
                let flags = input.byte();
                let payload = if c.index == 0 && !topic.starts_with("allowed/") {
                    Bytes::from_static(FORBIDDEN)
                } else {
                    let len = usize::from(flags >> 1) * 8;
                    Bytes::from(vec![b'p'; len])
                };
                let mut p = Publish::new(topic, payload);
                p.qos = qos;
                p.retain = flags & 1 != 0;
                p.packet_id = (qos != QoS::AtMostOnce).then(|| c.pid());
                let pid = p.packet_id;
                let ok = c.send(&Packet::Publish(p.clone())).await;
                if ok && qos == QoS::ExactlyOnce && flags & 0x80 != 0 {
                    // Retransmitted with DUP before the PUBREL: routed once only.
                    p.dup = true;
                    c.send(&Packet::Publish(p)).await;
                }
                if let (QoS::ExactlyOnce, Some(pid)) = (qos, pid) {
                    c.send(&Packet::PubRel(Ack::new(pid))).await;
                }
                c.round_trip().await
            }
            (5 | 6, Some(c)) => {
                c.ack_oldest(op & 0x0F == 6 && input.byte() < 16).await && c.round_trip().await
            }
            (7, Some(c)) => {
                let filter = input.pick(&FILTERS);
                let pid = c.pid();
                let u = Unsubscribe {
                    packet_id: pid,
                    filters: vec![filter.into()],
                    properties: Default::default(),
                };
                c.send(&Packet::Unsubscribe(u)).await && c.round_trip().await
            }
            (8, Some(c)) => {
                // Raw bytes, often malformed; the connection is given up afterwards.
                let n = usize::from(input.byte()) % 64;
                let raw = input.take(n).to_vec();
                let _ = c.writer.write_all(&raw).await;
                false
            }
            (9, Some(c)) => {
                let _ = c.send(&Packet::Disconnect(Disconnect::default())).await;
                false
            }
            (10, Some(_)) => false, // dropped without DISCONNECT: the will goes out
            (_, Some(c)) => c.round_trip().await,
        };
        if !alive {
            clients[i] = None;
        }
        check_bounds(&broker);
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
    drop(clients);
    // Every connection task finishes once its client is gone; then the counters are final.
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let stats = broker.stats();
    broker.shutdown().await;
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    stats
}

async fn connect(
    broker: &Broker,
    tasks: &mut tokio::task::JoinSet<()>,
    index: usize,
    input: &mut Input<'_>,
) -> Option<Client> {
    let flags = input.byte();
    // Clients 0 and 1 speak v5 with a fixed Receive Maximum (a resumed session's resends
    // are only bounded by the Receive Maximum it had before), client 2 speaks v3.
    let version = match index {
        2 if flags & 1 != 0 => ProtocolVersion::V3_1,
        2 => ProtocolVersion::V3_1_1,
        _ => ProtocolVersion::V5,
    };
    let mut c = Connect::new(version, format!("c{index}"));
    c.clean_start = flags & 4 != 0;
    c.keep_alive = 0;
    let receive_maximum = 1 + index as u16;
    if version.is_v5() {
        c.properties.receive_maximum = Some(receive_maximum);
        c.properties.session_expiry_interval = Some(if flags & 8 != 0 { 600 } else { 0 });
        c.properties.topic_alias_maximum = Some(u16::from(flags >> 4 & 3));
        if flags & 0x20 != 0 {
            c.properties.maximum_packet_size = Some(96);
        }
    }
    if flags & 0x10 != 0 {
        c.will = Some(codec::LastWill {
            topic: if index == 0 {
                "secret/x"
            } else {
                "allowed/will"
            }
            .into(),
            payload: if index == 0 {
                Bytes::from_static(FORBIDDEN)
            } else {
                Bytes::from_static(b"will")
            },
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        });
    }
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let identity = if index == 0 {
        Identity {
            principal: "user:limited".into(),
            permissions: Arc::new(Limited),
        }
    } else {
        Identity::superuser(format!("user:{index}"))
    };
    let mut info = ConnInfo::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + index as u16)),
        Transport::Tcp,
    );
    info.preauthenticated = Some(identity);
    tasks.spawn(broker.serve_connection(theirs, info));
    let (read, writer) = tokio::io::split(ours);
    let (packets, reading) = reader(read, version);
    let mut client = Client {
        index,
        version,
        writer,
        packets,
        reading,
        // v3 clients have no Receive Maximum: the broker's own bounds the window.
        receive_maximum: if version.is_v5() {
            receive_maximum
        } else {
            config().limits.receive_maximum
        },
        unacked: Vec::new(),
        next_pid: 0,
        aliases: Default::default(),
    };
    if !client.send(&Packet::Connect(Box::new(c))).await {
        return None;
    }
    match tokio::time::timeout(ANSWER, client.packets.recv()).await {
        Ok(Some(Packet::ConnAck(ack))) if !ack.reason_code.is_error() => Some(client),
        Ok(Some(Packet::ConnAck(_)) | None) => None,
        Ok(Some(other)) => panic!("expected CONNACK, got {other:?}"),
        Err(_) => panic!("no CONNACK within {ANSWER:?}"),
    }
}

/// Every session's queue is within the configured bounds (one message more is allowed into
/// an empty queue, so bytes may exceed by at most one message).
fn check_bounds(broker: &Broker) {
    let limits = &broker.inner.config.limits;
    let sessions: Vec<_> = broker.inner.lock_sessions().map.values().cloned().collect();
    for s in sessions {
        let st = s.lock();
        assert!(
            st.queue.acked_len() <= limits.max_queued_messages,
            "session {} queues {} QoS 1/2 messages",
            s.client_id,
            st.queue.acked_len()
        );
        let one_message = limits.max_packet_size as usize + 1024;
        assert!(
            st.queue.bytes() <= limits.max_queued_bytes + one_message,
            "session {} queues {} bytes",
            s.client_id,
            st.queue.bytes()
        );
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// The fuzz target's scripts, generated by proptest (256 cases; more with
        /// PROPTEST_CASES): the invariants above hold.
        #[test]
        fn broker_invariants_hold_for_random_scripts(script in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::run(&script);
        }
    }

    /// A script that exercises every operation once, so the driver itself is known to work:
    /// connect all three clients, subscribe, publish at each QoS, ack, misbehave, leave.
    #[test]
    fn scripted_walkthrough() {
        let script = [
            0x00, 0x06, // client 0 connects v5, clean, RM 1
            0x10, 0x16, // client 1 connects v5, clean, with a will
            0x20, 0x05, // client 2 connects v3.1.1, clean
            0x01, 0, 1, // client 0 subscribes allowed/# QoS 1
            0x11, 2, 2, // client 1 subscribes # QoS 2
            0x02, 2, 1, 0, // client 0 publishes secret/x: denied, never delivered
            0x12, 0, 2, 0x84, // client 1 publishes allowed/a QoS 2, with a DUP resend
            0x22, 1, 1, 3, // client 2 publishes allowed/b QoS 1 retained
            0x05, 0x15, 0x15, // acks
            0x16, 0, // a wrong ack
            0x27, 0, // unsubscribe
            0x28, 5, 0xE0, 0x01, 0x05, 0, 0,    // raw: DISCONNECT with an invalid reason
            0x1A, // client 1 drops: its will goes out
            0x09, // client 0 disconnects
        ];
        let stats = super::run(&script);
        assert_eq!(stats.connections_total, 3, "{stats:?}");
        assert!(stats.messages_sent >= 3, "{stats:?}");
        assert_eq!(stats.publish_denied, 1, "{stats:?}");
        assert_eq!(stats.malformed_packets, 1, "{stats:?}");
    }
}
