//! The background task that owns the socket: it writes what the [`crate::Client`] handles
//! ask for, runs the QoS 1/2 flows in both directions, pings, and reports what arrives as
//! [`Event`]s.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Duration,
};

use codec::{
    Ack, CodecError, MqttCodec, Packet, Publish, QoS, ReasonCode, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::codec::Framed;

use crate::{ClientError, Io};

/// What the connection reports to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message for one of our subscriptions (already acknowledged per its QoS).
    Publish(Publish),
    /// The connection ended; this is the last event. Connect again to continue.
    Disconnected(DisconnectReason),
}

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// [`crate::Client::disconnect`] was called, or every `Client` handle was dropped.
    Local,
    /// The broker sent DISCONNECT (v5) with this reason.
    Server {
        code: ReasonCode,
        reason: Option<String>,
        server_reference: Option<String>,
    },
    /// The broker closed the connection without DISCONNECT.
    Closed,
    /// No PINGRESP arrived in time.
    KeepAliveTimeout,
    /// A read/write failed or the broker sent something invalid.
    Error(String),
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

pub(crate) enum Command {
    Publish(Publish, Option<Reply<()>>),
    Subscribe(Subscribe, Reply<Vec<ReasonCode>>),
    Unsubscribe(Unsubscribe, Reply<Vec<ReasonCode>>),
    Disconnect(codec::Disconnect, Reply<()>),
    /// Drop the socket without DISCONNECT (the broker publishes the will).
    Abort,
}

enum Pending {
    /// QoS 1 awaiting PUBACK.
    PubAck(Reply<()>),
    /// QoS 2 awaiting PUBREC (then we send PUBREL).
    PubRec(Reply<()>),
    /// QoS 2 awaiting PUBCOMP.
    PubComp(Reply<()>),
    SubAck(Reply<Vec<ReasonCode>>),
    UnsubAck(Reply<Vec<ReasonCode>>, usize),
}

pub(crate) struct Connection {
    pub framed: Framed<Box<dyn Io>, MqttCodec>,
    pub commands: mpsc::Receiver<Command>,
    pub events: mpsc::Sender<Event>,
    pub keep_alive: Duration,
    /// The broker's Receive Maximum: how many QoS 1/2 publishes may be unacknowledged.
    pub send_quota: usize,
    pub v5: bool,
    /// Deliveries that did not fit in the event channel. Reading from the socket pauses while
    /// this holds `event_capacity` events; commands keep flowing meanwhile, so an application
    /// that publishes from its event handler cannot deadlock the connection.
    pub overflow: VecDeque<Event>,
    pub event_capacity: usize,
}

struct State {
    pending: HashMap<u16, Pending>,
    in_flight_publishes: usize,
    /// Publishes waiting for the in-flight window.
    queued: VecDeque<(Publish, Option<Reply<()>>)>,
    /// Inbound QoS 2 ids we have delivered and acknowledged with PUBREC.
    inbound_qos2: HashSet<u16>,
    next_id: u16,
}

impl State {
    fn allocate_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.pending.contains_key(&self.next_id) {
                return Some(self.next_id);
            }
        }
        None
    }
}

/// How many ready commands are written before flushing.
const BATCH: usize = 64;

impl Connection {
    pub async fn run(mut self) {
        let mut state = State {
            pending: HashMap::new(),
            in_flight_publishes: 0,
            queued: VecDeque::new(),
            inbound_qos2: HashSet::new(),
            next_id: 0,
        };
        let reason = self.run_loop(&mut state).await;
        let fail = || ClientError::Disconnected;
        for (_, pending) in state.pending.drain() {
            match pending {
                Pending::PubAck(r) | Pending::PubRec(r) | Pending::PubComp(r) => {
                    let _ = r.send(Err(fail()));
                }
                Pending::SubAck(r) | Pending::UnsubAck(r, _) => {
                    let _ = r.send(Err(fail()));
                }
            }
        }
        for (_, reply) in state.queued.drain(..) {
            if let Some(r) = reply {
                let _ = r.send(Err(fail()));
            }
        }
        tracing::debug!(?reason, "MQTT connection ended");
        // The application may have stopped listening; nothing else to tell.
        for event in std::mem::take(&mut self.overflow) {
            if self.events.send(event).await.is_err() {
                return;
            }
        }
        let _ = self.events.send(Event::Disconnected(reason)).await;
    }

    async fn run_loop(&mut self, state: &mut State) -> DisconnectReason {
        let mut last_sent = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        // A second handle, so that waiting for channel capacity does not borrow `self`.
        let events = self.events.clone();
        loop {
            let deadline = match ping_sent {
                Some(at) => at + self.keep_alive,
                None => last_sent + self.keep_alive,
            };
            let step = tokio::select! {
                command = self.commands.recv() => match command {
                    None => {
                        let _ = self.send(Packet::Disconnect(codec::Disconnect::default())).await;
                        let _ = self.framed.flush().await;
                        return DisconnectReason::Local;
                    }
                    Some(command) => {
                        let mut result = self.command(state, command).await;
                        for _ in 0..BATCH {
                            if !matches!(result, Ok(None)) {
                                break;
                            }
                            match self.commands.try_recv() {
                                Ok(command) => result = self.command(state, command).await,
                                Err(_) => break,
                            }
                        }
                        last_sent = Instant::now();
                        result
                    }
                },
                permit = events.reserve(), if !self.overflow.is_empty() => {
                    match (permit, self.overflow.pop_front()) {
                        (Ok(permit), Some(event)) => permit.send(event),
                        // The application dropped its receiver: it does not want messages.
                        _ => self.overflow.clear(),
                    }
                    Ok(None)
                }
                packet = self.framed.next(), if self.overflow.len() < self.event_capacity => match packet {
                    None => Ok(Some(DisconnectReason::Closed)),
                    Some(Err(CodecError::Io(e))) => Ok(Some(DisconnectReason::Error(format!("read failed: {e}")))),
                    Some(Err(e)) => Ok(Some(DisconnectReason::Error(format!("invalid packet from broker: {e}")))),
                    Some(Ok(Packet::PingResp)) => {
                        ping_sent = None;
                        Ok(None)
                    }
                    Some(Ok(packet)) => self.incoming(state, packet).await,
                },
                _ = tokio::time::sleep_until(deadline), if !self.keep_alive.is_zero() => {
                    if ping_sent.is_some() {
                        Ok(Some(DisconnectReason::KeepAliveTimeout))
                    } else {
                        ping_sent = Some(Instant::now());
                        last_sent = Instant::now();
                        self.send(Packet::PingReq).await.map(|()| None)
                    }
                }
            };
            let flushed = match step {
                Ok(None) => self.framed.flush().await.map_err(|e| write_failed(&e)),
                Ok(Some(reason)) => return reason,
                Err(reason) => Err(reason),
            };
            if let Err(reason) = flushed {
                return reason;
            }
        }
    }

    /// Queues a packet for writing (flushed at the end of the loop iteration).
    async fn send(&mut self, packet: Packet) -> Result<(), DisconnectReason> {
        self.framed.feed(packet).await.map_err(|e| write_failed(&e))
    }

    async fn command(
        &mut self,
        state: &mut State,
        command: Command,
    ) -> Result<Option<DisconnectReason>, DisconnectReason> {
        match command {
            Command::Publish(publish, reply) => {
                if publish.qos != QoS::AtMostOnce && state.in_flight_publishes >= self.send_quota {
                    state.queued.push_back((publish, reply));
                    return Ok(None);
                }
                self.publish(state, publish, reply).await?;
            }
            Command::Subscribe(mut subscribe, reply) => {
                let Some(id) = state.allocate_id() else {
                    let _ = reply.send(Err(ClientError::Protocol("no free packet id".into())));
                    return Ok(None);
                };
                subscribe.packet_id = id;
                if let Err(e) = self.framed.feed(Packet::Subscribe(subscribe)).await {
                    let reason = write_failed(&e);
                    let _ = reply.send(Err(e.into()));
                    return Err(reason);
                }
                state.pending.insert(id, Pending::SubAck(reply));
            }
            Command::Unsubscribe(mut unsubscribe, reply) => {
                let Some(id) = state.allocate_id() else {
                    let _ = reply.send(Err(ClientError::Protocol("no free packet id".into())));
                    return Ok(None);
                };
                unsubscribe.packet_id = id;
                let count = unsubscribe.filters.len();
                if let Err(e) = self.framed.feed(Packet::Unsubscribe(unsubscribe)).await {
                    let reason = write_failed(&e);
                    let _ = reply.send(Err(e.into()));
                    return Err(reason);
                }
                state.pending.insert(id, Pending::UnsubAck(reply, count));
            }
            Command::Disconnect(disconnect, reply) => {
                let result = async {
                    self.framed.send(Packet::Disconnect(disconnect)).await?;
                    tokio::io::AsyncWriteExt::shutdown(self.framed.get_mut()).await?;
                    Ok::<_, CodecError>(())
                }
                .await;
                let _ = reply.send(result.map_err(ClientError::from));
                return Ok(Some(DisconnectReason::Local));
            }
            Command::Abort => return Ok(Some(DisconnectReason::Local)),
        }
        Ok(None)
    }

    async fn publish(
        &mut self,
        state: &mut State,
        mut publish: Publish,
        reply: Option<Reply<()>>,
    ) -> Result<(), DisconnectReason> {
        if publish.qos == QoS::AtMostOnce {
            publish.packet_id = None;
            let result = self.framed.feed(Packet::Publish(publish)).await;
            let reason = result.as_ref().err().map(write_failed);
            if let Some(reply) = reply {
                let _ = reply.send(result.map_err(ClientError::from));
            }
            return reason.map_or(Ok(()), Err);
        }
        let Some(id) = state.allocate_id() else {
            if let Some(reply) = reply {
                let _ = reply.send(Err(ClientError::Protocol("no free packet id".into())));
            }
            return Ok(());
        };
        publish.packet_id = Some(id);
        let qos = publish.qos;
        if let Err(e) = self.framed.feed(Packet::Publish(publish)).await {
            let reason = write_failed(&e);
            if let Some(reply) = reply {
                let _ = reply.send(Err(e.into()));
            }
            return Err(reason);
        }
        // A caller that did not ask for confirmation still occupies the window until acked.
        let reply = reply.unwrap_or_else(|| oneshot::channel().0);
        let pending = if qos == QoS::AtLeastOnce {
            Pending::PubAck(reply)
        } else {
            Pending::PubRec(reply)
        };
        state.pending.insert(id, pending);
        state.in_flight_publishes += 1;
        Ok(())
    }

    /// A QoS 1/2 publish completed: let a queued one take its place.
    async fn release_window(&mut self, state: &mut State) -> Result<(), DisconnectReason> {
        state.in_flight_publishes = state.in_flight_publishes.saturating_sub(1);
        if state.in_flight_publishes < self.send_quota
            && let Some((publish, reply)) = state.queued.pop_front()
        {
            self.publish(state, publish, reply).await?;
        }
        Ok(())
    }

    async fn incoming(
        &mut self,
        state: &mut State,
        packet: Packet,
    ) -> Result<Option<DisconnectReason>, DisconnectReason> {
        match packet {
            Packet::Publish(publish) => {
                match (publish.qos, publish.packet_id) {
                    (QoS::AtMostOnce, _) => self.deliver(publish),
                    (QoS::AtLeastOnce, Some(id)) => {
                        self.deliver(publish);
                        self.send(Packet::PubAck(Ack::new(id))).await?;
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        // Deliver once; a re-sent PUBLISH before PUBREL is only re-acknowledged.
                        if state.inbound_qos2.insert(id) {
                            self.deliver(publish);
                        }
                        self.send(Packet::PubRec(Ack::new(id))).await?;
                    }
                    _ => return Err(protocol("QoS 1/2 PUBLISH without packet id")),
                }
            }
            Packet::PubRel(ack) => {
                state.inbound_qos2.remove(&ack.packet_id);
                let mut comp = Ack::new(ack.packet_id);
                if self.v5 && ack.reason_code.is_error() {
                    comp.reason_code = ReasonCode::PacketIdentifierNotFound;
                }
                self.send(Packet::PubComp(comp)).await?;
            }
            Packet::PubAck(ack) => match state.pending.remove(&ack.packet_id) {
                Some(Pending::PubAck(reply)) => {
                    let _ = reply.send(ack_result(&ack));
                    self.release_window(state).await?;
                }
                Some(other) => {
                    state.pending.insert(ack.packet_id, other);
                    return Err(protocol(
                        "PUBACK for a packet id that is not a QoS 1 PUBLISH",
                    ));
                }
                // A late or repeated acknowledgement (e.g. of a previous connection): harmless.
                None => tracing::debug!(id = ack.packet_id, "ignoring PUBACK for an unknown id"),
            },
            Packet::PubRec(ack) => match state.pending.remove(&ack.packet_id) {
                Some(Pending::PubRec(reply)) => {
                    if ack.reason_code.is_error() {
                        let _ = reply.send(ack_result(&ack));
                        self.release_window(state).await?;
                    } else {
                        state.pending.insert(ack.packet_id, Pending::PubComp(reply));
                        self.send(Packet::PubRel(Ack::new(ack.packet_id))).await?;
                    }
                }
                Some(other) => {
                    // A re-sent PUBREC after our PUBREL: answer again (spec 4.3.3).
                    let resend = matches!(other, Pending::PubComp(_));
                    state.pending.insert(ack.packet_id, other);
                    if !resend {
                        return Err(protocol(
                            "PUBREC for a packet id that is not a QoS 2 PUBLISH",
                        ));
                    }
                    self.send(Packet::PubRel(Ack::new(ack.packet_id))).await?;
                }
                None => {
                    // Complete the broker's side of a flow we no longer track (spec 4.3.3).
                    let mut rel = Ack::new(ack.packet_id);
                    if self.v5 {
                        rel.reason_code = ReasonCode::PacketIdentifierNotFound;
                    }
                    self.send(Packet::PubRel(rel)).await?;
                }
            },
            Packet::PubComp(ack) => match state.pending.remove(&ack.packet_id) {
                Some(Pending::PubComp(reply)) => {
                    let _ = reply.send(ack_result(&ack));
                    self.release_window(state).await?;
                }
                Some(other) => {
                    state.pending.insert(ack.packet_id, other);
                    return Err(protocol(
                        "PUBCOMP for a packet id that is not a QoS 2 PUBLISH",
                    ));
                }
                None => tracing::debug!(id = ack.packet_id, "ignoring PUBCOMP for an unknown id"),
            },
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                ..
            }) => match state.pending.remove(&packet_id) {
                Some(Pending::SubAck(reply)) => {
                    let _ = reply.send(Ok(reason_codes));
                }
                _ => return Err(protocol("SUBACK for a packet id we are not waiting for")),
            },
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes,
                ..
            }) => {
                match state.pending.remove(&packet_id) {
                    Some(Pending::UnsubAck(reply, count)) => {
                        // v3 UNSUBACK carries no codes: every filter was removed.
                        let codes = if reason_codes.is_empty() {
                            vec![ReasonCode::Success; count]
                        } else {
                            reason_codes
                        };
                        let _ = reply.send(Ok(codes));
                    }
                    _ => return Err(protocol("UNSUBACK for a packet id we are not waiting for")),
                }
            }
            Packet::Disconnect(d) => {
                return Ok(Some(DisconnectReason::Server {
                    code: d.reason_code,
                    reason: d.properties.reason_string,
                    server_reference: d.properties.server_reference,
                }));
            }
            other => {
                return Err(DisconnectReason::Error(format!(
                    "unexpected {} from the broker",
                    other.name()
                )));
            }
        }
        Ok(None)
    }

    fn deliver(&mut self, publish: Publish) {
        let event = Event::Publish(publish);
        if !self.overflow.is_empty() {
            self.overflow.push_back(event);
            return;
        }
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => self.overflow.push_back(event),
            // The application dropped its receiver: it does not want messages.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

fn ack_result(ack: &Ack) -> Result<(), ClientError> {
    if ack.reason_code.is_error() {
        Err(ClientError::Rejected {
            code: ack.reason_code,
            reason: ack.properties.reason_string.clone(),
        })
    } else {
        Ok(())
    }
}

fn protocol(what: &str) -> DisconnectReason {
    DisconnectReason::Error(format!("protocol violation by the broker: {what}"))
}

fn write_failed(e: &CodecError) -> DisconnectReason {
    DisconnectReason::Error(format!("write failed: {e}"))
}
