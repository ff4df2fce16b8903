//! A broker on 127.0.0.1:0 with a tiny accept loop, and a raw MQTT test client built on the
//! codec, so tests see exactly the packets the broker sends.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use broker::{
    Broker, BrokerConfig, ConnInfo,
    auth::{
        AllowAll, AuthError, AuthFuture, Authenticator, ConnectRequest, Identity, Permissions,
        Transport,
    },
};
use bytes::Bytes;
use codec::{
    Ack, ConnAck, Connect, Disconnect, LastWill, MqttCodec, Packet, ProtocolVersion, Publish, QoS,
    ReasonCode, SubAck, Subscribe, SubscribeOptions, Subscription,
};
use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpStream, task::JoinSet};
use tokio_util::codec::Framed;

pub const WAIT: Duration = Duration::from_secs(5);

/// Test ACL: user "limited" may publish only `allowed/#` and subscribe only `allowed/#`.
#[derive(Debug)]
pub struct Limited;

impl Permissions for Limited {
    fn may_publish(&self, topic: &str) -> bool {
        topic.starts_with("allowed/")
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        filter.starts_with("allowed/")
    }
}

/// Username "bad" => bad credentials, "banned" => not authorized, "limited" => ACL above,
/// "slow" => never answers; everyone else is a superuser named after the client id.
pub struct TestAuth;

impl Authenticator for TestAuth {
    fn authenticate<'a>(&'a self, r: ConnectRequest<'a>) -> AuthFuture<'a> {
        Box::pin(async move {
            match r.username {
                Some("bad") => Err(AuthError::BadCredentials),
                Some("banned") => Err(AuthError::NotAuthorized("revoked".into())),
                Some("limited") => Ok(Identity {
                    principal: format!("user:{}", r.client_id),
                    permissions: Arc::new(Limited),
                }),
                Some("slow") => {
                    std::future::pending::<()>().await;
                    Err(AuthError::Unavailable("never".into()))
                }
                Some(u) => Ok(Identity {
                    principal: format!("user:{u}"),
                    permissions: Arc::new(AllowAll),
                }),
                None => Ok(Identity::superuser(format!("client:{}", r.client_id))),
            }
        })
    }
}

pub struct TestBroker {
    pub broker: Broker,
    pub addr: SocketAddr,
    tasks: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TestBroker {
    /// Default configuration, except that `$SYS` topics are off (they would show up in
    /// the retained counts tests check).
    pub async fn start() -> TestBroker {
        TestBroker::with_config(BrokerConfig {
            sys_interval: Duration::ZERO,
            ..BrokerConfig::default()
        })
        .await
    }

    pub async fn with_config(config: BrokerConfig) -> TestBroker {
        TestBroker::with_auth(config, Arc::new(TestAuth)).await
    }

    pub async fn with_auth(config: BrokerConfig, auth: Arc<dyn Authenticator>) -> TestBroker {
        let broker = Broker::open(config, auth).await.expect("broker opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (b, t) = (broker.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let b = b.clone();
                t.lock().unwrap().spawn(async move {
                    b.serve_connection(stream, ConnInfo::new(peer, Transport::Tcp))
                        .await;
                });
            }
        });
        TestBroker {
            broker,
            addr,
            tasks,
            accept,
        }
    }

    /// Emulates a crash: stops accepting, aborts every connection task without any
    /// shutdown logic, and drops the broker.
    pub async fn crash(self) {
        self.accept.abort();
        let _ = self.accept.await;
        let mut set = std::mem::take(&mut *self.tasks.lock().unwrap());
        set.abort_all();
        while set.join_next().await.is_some() {}
        drop(self.broker);
    }

    pub fn client(&self, id: &str) -> ClientBuilder {
        ClientBuilder {
            addr: self.addr,
            connect: Connect::new(ProtocolVersion::V5, id),
        }
    }

    /// A connection that has sent nothing yet, decoding the broker's packets as `version`.
    pub async fn raw_client(&self, version: ProtocolVersion) -> TestClient {
        TestClient {
            framed: Framed::new(self.raw().await, MqttCodec::new(version, u32::MAX)),
        }
    }

    pub async fn raw(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }
}

pub struct ClientBuilder {
    addr: SocketAddr,
    pub connect: Connect,
}

impl ClientBuilder {
    /// A v5 client for a broker at `addr` (e.g. one in another process).
    pub fn new(addr: SocketAddr, id: &str) -> ClientBuilder {
        ClientBuilder {
            addr,
            connect: Connect::new(ProtocolVersion::V5, id),
        }
    }

    pub fn v5(mut self) -> Self {
        self.connect.protocol = ProtocolVersion::V5;
        self
    }
    pub fn v311(mut self) -> Self {
        self.connect.protocol = ProtocolVersion::V3_1_1;
        self
    }
    pub fn v31(mut self) -> Self {
        self.connect.protocol = ProtocolVersion::V3_1;
        self
    }
    pub fn clean(mut self, clean: bool) -> Self {
        self.connect.clean_start = clean;
        self
    }
    pub fn expiry(mut self, secs: u32) -> Self {
        self.connect.properties.session_expiry_interval = Some(secs);
        self
    }
    pub fn keep_alive(mut self, secs: u16) -> Self {
        self.connect.keep_alive = secs;
        self
    }
    pub fn user(mut self, name: &str) -> Self {
        self.connect.username = Some(name.into());
        self.connect.password = Some(Bytes::from_static(b"pw"));
        self
    }
    pub fn receive_maximum(mut self, n: u16) -> Self {
        self.connect.properties.receive_maximum = Some(n);
        self
    }
    /// v5 Topic Alias Maximum: the broker may assign up to `n` aliases towards us.
    pub fn topic_alias_maximum(mut self, n: u16) -> Self {
        self.connect.properties.topic_alias_maximum = Some(n);
        self
    }

    pub fn max_packet_size(mut self, n: u32) -> Self {
        self.connect.properties.maximum_packet_size = Some(n);
        self
    }
    pub fn will(mut self, topic: &str, payload: &str, delay: Option<u32>) -> Self {
        let mut w = LastWill {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        };
        w.properties.will_delay_interval = delay;
        self.connect.will = Some(w);
        self
    }

    /// Connects and returns the client with the CONNACK, whatever it says.
    pub async fn connect_raw(self) -> (TestClient, ConnAck) {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let version = self.connect.protocol;
        let mut c = TestClient {
            framed: Framed::new(stream, MqttCodec::new(version, u32::MAX)),
        };
        c.send(Packet::Connect(Box::new(self.connect))).await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) => (c, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and asserts success.
    pub async fn connect(self) -> TestClient {
        let (c, ack) = self.connect_raw().await;
        assert_eq!(ack.reason_code, ReasonCode::Success, "CONNACK {ack:?}");
        c
    }
}

pub struct TestClient {
    pub framed: Framed<TcpStream, MqttCodec>,
}

impl TestClient {
    pub async fn send(&mut self, p: Packet) {
        self.framed.send(p).await.expect("send");
    }

    /// The next packet, or `None` if the broker closed the connection. Panics after 5 s.
    pub async fn recv(&mut self) -> Option<Packet> {
        match tokio::time::timeout(WAIT, self.framed.next()).await {
            Ok(Some(Ok(p))) => Some(p),
            Ok(Some(Err(e))) => panic!("decode error: {e}"),
            Ok(None) => None,
            Err(_) => panic!("no packet within {WAIT:?}"),
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: &str, qos: QoS, retain: bool) {
        let mut p = Publish::new(topic, Bytes::copy_from_slice(payload.as_bytes()));
        p.qos = qos;
        p.retain = retain;
        p.packet_id = (qos != QoS::AtMostOnce).then_some(77);
        self.publish_packet(p).await;
    }

    /// Sends a PUBLISH and completes its QoS flow; returns the PUBACK/PUBREC reason code.
    pub async fn publish_packet(&mut self, p: Publish) -> ReasonCode {
        let (qos, pid) = (p.qos, p.packet_id.unwrap_or(0));
        self.send(Packet::Publish(p)).await;
        match qos {
            QoS::AtMostOnce => ReasonCode::Success,
            QoS::AtLeastOnce => match self.recv_skipping_publish().await {
                Some(Packet::PubAck(a)) if a.packet_id == pid => a.reason_code,
                other => panic!("expected PUBACK {pid}, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                let code = match self.recv_skipping_publish().await {
                    Some(Packet::PubRec(a)) if a.packet_id == pid => a.reason_code,
                    other => panic!("expected PUBREC {pid}, got {other:?}"),
                };
                if code.is_error() {
                    return code;
                }
                self.send(Packet::PubRel(Ack::new(pid))).await;
                match self.recv_skipping_publish().await {
                    Some(Packet::PubComp(a)) if a.packet_id == pid => code,
                    other => panic!("expected PUBCOMP {pid}, got {other:?}"),
                }
            }
        }
    }

    async fn recv_skipping_publish(&mut self) -> Option<Packet> {
        loop {
            match self.recv().await {
                Some(Packet::Publish(_)) => continue,
                other => return other,
            }
        }
    }

    pub async fn subscribe_with(
        &mut self,
        subs: Vec<(&str, SubscribeOptions)>,
        sub_id: Option<u32>,
    ) -> SubAck {
        let mut s = Subscribe {
            packet_id: 9,
            subscriptions: subs
                .into_iter()
                .map(|(f, options)| Subscription {
                    filter: f.to_string(),
                    options,
                })
                .collect(),
            properties: Default::default(),
        };
        s.properties.subscription_identifier = sub_id;
        self.send(Packet::Subscribe(s)).await;
        match self.recv().await {
            Some(Packet::SubAck(a)) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_with(vec![(filter, SubscribeOptions::qos(qos))], None)
            .await
    }

    /// The next PUBLISH (acknowledging QoS 1/2 as a well-behaved client would).
    pub async fn expect_publish(&mut self) -> Publish {
        let p = match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        };
        self.ack(&p).await;
        p
    }

    /// The next PUBLISH without acknowledging it.
    pub async fn expect_publish_noack(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    pub async fn ack(&mut self, p: &Publish) {
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(pid)) => self.send(Packet::PubAck(Ack::new(pid))).await,
            (QoS::ExactlyOnce, Some(pid)) => {
                self.send(Packet::PubRec(Ack::new(pid))).await;
                match self.recv().await {
                    Some(Packet::PubRel(a)) if a.packet_id == pid => {}
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(Packet::PubComp(Ack::new(pid))).await;
            }
            _ => {}
        }
    }

    /// Round trip: every packet the broker sent before the PINGRESP is returned.
    pub async fn sync(&mut self) -> Vec<Packet> {
        self.send(Packet::PingReq).await;
        let mut before = Vec::new();
        loop {
            match self.recv().await {
                Some(Packet::PingResp) => return before,
                Some(p) => before.push(p),
                None => panic!("closed during sync"),
            }
        }
    }

    /// Expects a DISCONNECT (v5) followed by the connection closing; returns its reason.
    pub async fn expect_disconnect(&mut self) -> Option<Disconnect> {
        let mut d = None;
        loop {
            match tokio::time::timeout(WAIT, self.framed.next()).await {
                Ok(Some(Ok(Packet::Disconnect(x)))) => d = Some(x),
                // Whatever was in flight before it (PUBLISH, acks).
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => return d,
                Err(_) => panic!("connection not closed within {WAIT:?}"),
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::default())).await;
        let _ = self.framed.close().await;
    }
}

/// With `watch` subscribed to `topic`: connects "ctrl" with a will to `topic` after `delay`
/// seconds and drops it. Its will arriving first proves that no will scheduled before it
/// with the same or a shorter delay was sent, without timing anything.
pub async fn will_marker(b: &TestBroker, watch: &mut TestClient, topic: &str, delay: u32) {
    let ctrl = b
        .client("ctrl")
        .will(topic, "marker", Some(delay))
        .expiry(60)
        .connect()
        .await;
    drop(ctrl);
    let got = watch.expect_publish().await;
    assert_eq!(&got.topic[..], topic, "an earlier will was sent: {got:?}");
}

/// Waits until `cond` holds, polling every 5 ms, for up to 5 s.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
