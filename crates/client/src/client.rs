//! The [`Client`] handle and [`connect`].

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use codec::{
    ByteStr, ConnAckProperties, Connect, Disconnect, MqttCodec, Packet, ProtocolVersion, Publish,
    QoS, ReasonCode, Subscribe, SubscribeOptions, SubscribeProperties, Subscription, Unsubscribe,
    UnsubscribeProperties,
};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::{mpsc, oneshot},
};
use tokio_util::codec::Framed;

use crate::{
    BrokerUrl, ClientError, ClientOptions,
    connection::{Command, Connection, Event},
};

/// A byte stream the client can run over (TCP, TLS, or anything a test provides).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The events of one connection; the last one is [`Event::Disconnected`].
pub type Events = mpsc::Receiver<Event>;

/// What the broker said in CONNACK.
#[derive(Debug, Clone)]
pub struct Session {
    pub version: ProtocolVersion,
    pub session_present: bool,
    /// CONNACK properties (v5; defaults for v3).
    pub properties: ConnAckProperties,
    /// The client id in use: ours, or the one the broker assigned (v5).
    pub client_id: String,
}

/// A cheap, clonable handle to a connection. The connection closes cleanly (DISCONNECT) when
/// [`Client::disconnect`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    session: Arc<Session>,
}

/// Resolves when a publish is complete: QoS 0 when written, QoS 1 on PUBACK, QoS 2 on PUBCOMP.
#[must_use = "a Delivery does nothing unless awaited"]
pub struct Delivery(oneshot::Receiver<Result<(), ClientError>>);

impl Future for Delivery {
    type Output = Result<(), ClientError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Disconnected)))
    }
}

/// Connects over TCP or TLS as the options say and completes the CONNECT/CONNACK exchange.
pub async fn connect(options: &ClientOptions) -> Result<(Client, Events), ClientError> {
    let url = BrokerUrl::parse(&options.url)?;
    let secs = options.connect_timeout.as_secs_f64();
    let deadline = tokio::time::Instant::now() + options.connect_timeout;
    let addr = url.addr();
    let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(&addr))
        .await
        .map_err(|_| ClientError::Timeout {
            what: "connecting",
            secs,
        })?
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if url.tls {
        let config = options
            .tls
            .clone()
            .ok_or_else(|| ClientError::TlsRequired(options.url.clone()))?;
        let name = options
            .tls_server_name
            .clone()
            .unwrap_or_else(|| url.host.clone());
        let name = ServerName::try_from(name)
            .map_err(|e| ClientError::TlsConfig(format!("invalid TLS server name: {e}")))?;
        let tls = tokio::time::timeout_at(
            deadline,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| ClientError::Timeout {
            what: "in the TLS handshake",
            secs,
        })?
        .map_err(|source| ClientError::TlsHandshake {
            addr: addr.clone(),
            source,
        })?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    tokio::time::timeout_at(deadline, connect_stream(stream, options))
        .await
        .map_err(|_| ClientError::Timeout {
            what: "waiting for CONNACK",
            secs,
        })?
}

/// Runs MQTT over an already-connected stream (e.g. a WebSocket adapter); the URL and TLS
/// options are not used. No timeout is applied here.
pub async fn connect_stream(
    stream: impl Io,
    options: &ClientOptions,
) -> Result<(Client, Events), ClientError> {
    let stream: Box<dyn Io> = Box::new(stream);
    let version = options.version;
    let mut framed = Framed::new(stream, MqttCodec::new(version, options.max_packet_size));
    let mut connect = Connect::new(version, options.client_id.clone());
    connect.clean_start = options.clean_start;
    connect.keep_alive = options.keep_alive;
    connect.username = options.username.clone();
    connect.password = options.password.clone();
    connect.will = options.will.clone();
    if version.is_v5() {
        connect.properties.session_expiry_interval = options.session_expiry;
        if options.max_packet_size < codec::MAX_REMAINING_LENGTH as u32 {
            connect.properties.maximum_packet_size = Some(options.max_packet_size);
        }
    }
    framed.send(Packet::Connect(Box::new(connect))).await?;
    let connack = match framed.next().await {
        Some(Ok(Packet::ConnAck(ack))) => ack,
        Some(Ok(Packet::Auth(_))) => {
            return Err(ClientError::Protocol(
                "broker started enhanced authentication, which this client does not support".into(),
            ));
        }
        Some(Ok(other)) => {
            return Err(ClientError::Protocol(format!(
                "expected CONNACK, got {}",
                other.name()
            )));
        }
        Some(Err(e)) => return Err(e.into()),
        None => {
            return Err(ClientError::Protocol(
                "broker closed the connection before CONNACK".into(),
            ));
        }
    };
    if connack.reason_code.is_error() {
        return Err(ClientError::Refused {
            code: connack.reason_code,
            reason: connack.properties.reason_string,
        });
    }
    let keep_alive = connack
        .properties
        .server_keep_alive
        .unwrap_or(options.keep_alive);
    let send_quota = usize::from(connack.properties.receive_maximum.unwrap_or(u16::MAX));
    let session = Arc::new(Session {
        version,
        session_present: connack.session_present,
        client_id: connack
            .properties
            .assigned_client_identifier
            .clone()
            .unwrap_or_else(|| options.client_id.clone()),
        properties: connack.properties,
    });
    let (command_tx, command_rx) = mpsc::channel(256);
    let event_capacity = options.event_capacity.max(1);
    let (event_tx, event_rx) = mpsc::channel(event_capacity);
    let connection = Connection {
        framed,
        commands: command_rx,
        events: event_tx,
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        send_quota,
        v5: version.is_v5(),
        overflow: Default::default(),
        event_capacity,
    };
    tokio::spawn(connection.run());
    Ok((
        Client {
            commands: command_tx,
            session,
        },
        event_rx,
    ))
}

impl Client {
    /// What the broker said when we connected.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Whether the connection task is still running.
    pub fn is_connected(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Publishes and waits for completion (see [`Delivery`]).
    pub async fn publish(
        &self,
        topic: impl Into<ByteStr>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<(), ClientError> {
        let mut message = Publish::new(topic, payload);
        message.qos = qos;
        message.retain = retain;
        self.publish_message(message).await?.await
    }

    /// Hands a message (with v5 properties if any) to the connection and returns a
    /// [`Delivery`] to await completion, so that several QoS 1/2 messages can be in flight.
    /// The packet id is assigned by the connection. Waits only if the command queue is full.
    pub async fn publish_message(&self, message: Publish) -> Result<Delivery, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Publish(message, Some(tx)))
            .await
            .map_err(|_| ClientError::Disconnected)?;
        Ok(Delivery(rx))
    }

    /// Fire-and-forget publish: no completion is reported (QoS 1/2 are still acknowledged
    /// and still count against the broker's receive maximum).
    pub async fn publish_detached(&self, message: Publish) -> Result<(), ClientError> {
        self.commands
            .send(Command::Publish(message, None))
            .await
            .map_err(|_| ClientError::Disconnected)
    }

    /// Subscribes to one filter; returns the broker's reason code (granted QoS or failure).
    pub async fn subscribe(
        &self,
        filter: impl Into<String>,
        qos: QoS,
    ) -> Result<ReasonCode, ClientError> {
        let codes = self
            .subscribe_many(
                vec![Subscription {
                    filter: filter.into(),
                    options: SubscribeOptions::qos(qos),
                }],
                SubscribeProperties::default(),
            )
            .await?;
        codes
            .first()
            .copied()
            .ok_or_else(|| ClientError::Protocol("empty SUBACK".into()))
    }

    /// Subscribes to several filters with full options; one reason code per filter.
    pub async fn subscribe_many(
        &self,
        subscriptions: Vec<Subscription>,
        properties: SubscribeProperties,
    ) -> Result<Vec<ReasonCode>, ClientError> {
        let count = subscriptions.len();
        let subscribe = Subscribe {
            packet_id: 0,
            subscriptions,
            properties,
        };
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Subscribe(subscribe, tx))
            .await
            .map_err(|_| ClientError::Disconnected)?;
        let codes = rx.await.map_err(|_| ClientError::Disconnected)??;
        if codes.len() != count {
            return Err(ClientError::Protocol(format!(
                "SUBACK has {} reason codes for {count} filters",
                codes.len()
            )));
        }
        Ok(codes)
    }

    /// Unsubscribes; one reason code per filter (always Success for v3 brokers).
    pub async fn unsubscribe(&self, filters: Vec<String>) -> Result<Vec<ReasonCode>, ClientError> {
        let unsubscribe = Unsubscribe {
            packet_id: 0,
            filters,
            properties: UnsubscribeProperties::default(),
        };
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Unsubscribe(unsubscribe, tx))
            .await
            .map_err(|_| ClientError::Disconnected)?;
        rx.await.map_err(|_| ClientError::Disconnected)?
    }

    /// Sends DISCONNECT (normal, so no will is published) and closes the connection.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.disconnect_with(Disconnect::default()).await
    }

    /// Sends the given DISCONNECT (v5: e.g. reason 0x04 to have the will published, or a
    /// session expiry) and closes the connection.
    pub async fn disconnect_with(&self, disconnect: Disconnect) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Disconnect(disconnect, tx))
            .await
            .map_err(|_| ClientError::Disconnected)?;
        rx.await.map_err(|_| ClientError::Disconnected)?
    }

    /// Drops the connection without DISCONNECT, as a crash would: the broker publishes the will.
    pub async fn abort(&self) {
        let _ = self.commands.send(Command::Abort).await;
    }
}
