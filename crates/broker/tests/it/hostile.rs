//! Hostile clients (issue 8): each attack, and what it gets now. Real sockets, a real
//! broker, raw MQTT packets.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use broker::{
    BrokerConfig, ConnInfo, Limits,
    auth::{
        AllowAll, AuthError, AuthFuture, Authenticator, ConnectRequest, Identity, Permissions,
        Transport,
    },
};
use bytes::Bytes;
use codec::{
    Connect, MqttCodec, Packet, ProtocolVersion, Publish, QoS, ReasonCode, SubscribeOptions,
};
use futures_util::{SinkExt, StreamExt};

use crate::helpers::{Limited, TestBroker, wait_until};

/// User name `u` => principal `user:u`; without one, a superuser `client:{client id}`.
/// `user:alice` gets the [`Limited`] ACL once `restrict_alice` is set. Client ids
/// `reserved-{name}` belong to `user:{name}` only. Counts `authenticate` calls.
#[derive(Default)]
struct HostileAuth {
    restrict_alice: AtomicBool,
    calls: AtomicUsize,
}

impl Authenticator for HostileAuth {
    fn authenticate<'a>(&'a self, r: ConnectRequest<'a>) -> AuthFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let Some(user) = r.username else {
                return Ok(Identity::superuser(format!("client:{}", r.client_id)));
            };
            let permissions: Arc<dyn Permissions> =
                if user == "alice" && self.restrict_alice.load(Ordering::SeqCst) {
                    Arc::new(Limited)
                } else {
                    Arc::new(AllowAll)
                };
            Ok(Identity {
                principal: format!("user:{user}"),
                permissions,
            })
        })
    }

    fn authorize_client_id<'a>(
        &'a self,
        identity: &'a Identity,
        client_id: &'a str,
    ) -> AuthFuture<'a, ()> {
        Box::pin(async move {
            match client_id.strip_prefix("reserved-") {
                Some(owner) if identity.principal != format!("user:{owner}") => Err(
                    AuthError::ClientIdNotValid(format!("client id reserved to user {owner}")),
                ),
                _ => Ok(()),
            }
        })
    }
}

fn config(limits: Limits) -> BrokerConfig {
    BrokerConfig {
        sys_interval: std::time::Duration::ZERO,
        limits,
        ..BrokerConfig::default()
    }
}

async fn start(limits: Limits) -> (TestBroker, Arc<HostileAuth>) {
    let auth = Arc::new(HostileAuth::default());
    (
        TestBroker::with_auth(config(limits), auth.clone()).await,
        auth,
    )
}

fn deep(levels: usize) -> String {
    vec!["a"; levels].join("/")
}

// ---- 1. deep filters and topics ----

#[tokio::test]
async fn thirty_thousand_level_filter_and_topic_are_refused_and_the_broker_keeps_serving() {
    let (b, _) = start(Limits::default()).await;
    let mut bystander = b.client("bystander").connect().await;
    bystander.subscribe("ok/#", QoS::AtLeastOnce).await;

    let mut attacker = b.client("attacker").connect().await;
    let ack = attacker.subscribe(&deep(30_000), QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::TopicFilterInvalid]);
    let ack = attacker
        .subscribe(&format!("$share/g/{}", deep(30_000)), QoS::AtLeastOnce)
        .await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::TopicFilterInvalid]);
    // v5 QoS 1: refused with PUBACK 0x90, the connection stays.
    let mut p = Publish::new(deep(30_000), Bytes::from_static(b"x"));
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(3);
    assert_eq!(
        attacker.publish_packet(p).await,
        ReasonCode::TopicNameInvalid
    );
    // Just over the default limits: 33 levels, 1025 bytes.
    let ack = attacker.subscribe(&deep(33), QoS::AtMostOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::TopicFilterInvalid]);
    let ack = attacker.subscribe(&deep(32), QoS::AtMostOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::Success]);
    let ack = attacker
        .subscribe(&format!("$share/g/{}", deep(32)), QoS::AtMostOnce)
        .await;
    assert_eq!(
        ack.reason_codes,
        vec![ReasonCode::Success],
        "levels after $share/g/"
    );
    let ack = attacker.subscribe(&"x".repeat(1025), QoS::AtMostOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::TopicFilterInvalid]);
    // v5 QoS 0 has no ack: DISCONNECT 0x90.
    attacker
        .send(Packet::Publish(Publish::new(
            deep(30_000),
            Bytes::from_static(b"x"),
        )))
        .await;
    let d = attacker.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::TopicNameInvalid);
    // v3: the connection is closed.
    let mut v3 = b.client("v3").v311().connect().await;
    v3.publish(&deep(30_000), "x", QoS::AtMostOnce, false).await;
    assert_eq!(v3.recv().await, None);

    bystander.sync().await;
    let mut publisher = b.client("publisher").connect().await;
    publisher
        .publish("ok/1", "still here", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&bystander.expect_publish().await.payload[..], b"still here");
    assert_eq!(b.broker.stats().topic_limit_exceeded, 7);
}

/// With the limits lifted, the same depth goes through the trie and the retained tree
/// without recursion: the broker routes and retains it.
#[tokio::test]
async fn thirty_thousand_levels_within_raised_limits_are_routed_without_recursion() {
    let (b, _) = start(Limits {
        max_topic_levels: 40_000,
        max_topic_length: 65_535,
        ..Limits::default()
    })
    .await;
    let topic = deep(30_000);
    let mut sub = b.client("sub").connect().await;
    let ack = sub.subscribe(&format!("{topic}/#"), QoS::AtLeastOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS1]);
    let mut publisher = b.client("pub").connect().await;
    publisher
        .publish(&topic, "deep", QoS::AtLeastOnce, true)
        .await;
    assert_eq!(sub.expect_publish().await.topic, topic);
    let mut late = b.client("late").connect().await;
    late.subscribe("a/+/#", QoS::AtLeastOnce).await;
    assert_eq!(&late.expect_publish().await.payload[..], b"deep");
    let mut unsub = codec::Unsubscribe {
        packet_id: 5,
        filters: vec![format!("{topic}/#")],
        properties: Default::default(),
    };
    unsub.filters.push("never".into());
    sub.send(Packet::Unsubscribe(unsub)).await;
    match sub.recv().await {
        Some(Packet::UnsubAck(a)) => assert_eq!(a.reason_codes[0], ReasonCode::Success),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    publisher.publish(&topic, "", QoS::AtLeastOnce, true).await;
    assert_eq!(b.broker.stats().retained_messages, 0);
    assert_eq!(b.broker.stats().subscriptions, 1);
}

// ---- 2. one owner per session ----

#[tokio::test]
async fn another_principal_can_neither_take_over_nor_resume_nor_clean_a_session() {
    let (b, _) = start(Limits::default()).await;
    let mut device = b
        .client("kitchen")
        .user("kitchen")
        .clean(false)
        .expiry(600)
        .connect()
        .await;
    device
        .subscribe("devices/kitchen/set/#", QoS::AtLeastOnce)
        .await;
    for clean in [false, true] {
        let (_, ack) = b
            .client("kitchen")
            .user("viewer")
            .clean(clean)
            .expiry(600)
            .connect_raw()
            .await;
        assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
        assert!(!ack.session_present);
    }
    let (_, ack) = b
        .client("kitchen")
        .user("viewer")
        .v311()
        .clean(false)
        .connect_raw()
        .await;
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    // The device was not kicked.
    device.sync().await;
    device.disconnect().await;
    // Offline and stored: still not the viewer's.
    let mut commander = b.client("cmd").connect().await;
    commander
        .publish("devices/kitchen/set/light", "on", QoS::AtLeastOnce, false)
        .await;
    let (_, ack) = b
        .client("kitchen")
        .user("viewer")
        .clean(false)
        .expiry(600)
        .connect_raw()
        .await;
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    // The owner resumes it, queued command included.
    let (mut device, ack) = b
        .client("kitchen")
        .user("kitchen")
        .clean(false)
        .expiry(600)
        .connect_raw()
        .await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present);
    assert_eq!(&device.expect_publish().await.payload[..], b"on");
    assert_eq!(b.broker.stats().client_id_refused, 4);
}

#[tokio::test]
async fn the_client_id_rule_holds_for_preauthenticated_connections() {
    let (b, _) = start(Limits::default()).await;
    let connect_preauthenticated = |principal: &str| {
        let (client, server) = tokio::io::duplex(4096);
        let mut info = ConnInfo::new("127.0.0.1:1".parse().unwrap(), Transport::Wss);
        info.preauthenticated = Some(Identity::superuser(principal));
        tokio::spawn(b.broker.serve_connection(server, info));
        tokio_util::codec::Framed::new(client, MqttCodec::new(ProtocolVersion::V5, u32::MAX))
    };
    let mut viewer = connect_preauthenticated("user:viewer");
    let connect = Connect::new(ProtocolVersion::V5, "reserved-kitchen");
    viewer
        .send(Packet::Connect(Box::new(connect)))
        .await
        .unwrap();
    match viewer.next().await {
        Some(Ok(Packet::ConnAck(a))) => {
            assert_eq!(a.reason_code, ReasonCode::ClientIdentifierNotValid)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let mut owner = connect_preauthenticated("user:kitchen");
    let connect = Connect::new(ProtocolVersion::V5, "reserved-kitchen");
    owner
        .send(Packet::Connect(Box::new(connect)))
        .await
        .unwrap();
    match owner.next().await {
        Some(Ok(Packet::ConnAck(a))) => assert_eq!(a.reason_code, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // And over TCP with credentials.
    let (_, ack) = b
        .client("reserved-kitchen")
        .user("viewer")
        .connect_raw()
        .await;
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
}

#[tokio::test]
async fn a_session_owner_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let limits = || BrokerConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..config(Limits::default())
    };
    let auth = Arc::new(HostileAuth::default());
    let b = TestBroker::with_auth(limits(), auth.clone()).await;
    let mut device = b
        .client("kitchen")
        .user("kitchen")
        .clean(false)
        .expiry(600)
        .connect()
        .await;
    device.subscribe("k/#", QoS::AtLeastOnce).await;
    device.disconnect().await;
    b.broker.shutdown().await;
    b.crash().await;

    let b = TestBroker::with_auth(limits(), auth).await;
    let (_, ack) = b
        .client("kitchen")
        .user("viewer")
        .clean(false)
        .expiry(600)
        .connect_raw()
        .await;
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    let (_, ack) = b
        .client("kitchen")
        .user("kitchen")
        .clean(false)
        .expiry(600)
        .connect_raw()
        .await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present);
}

#[tokio::test]
async fn a_principal_cannot_join_another_principals_share_group() {
    let (b, _) = start(Limits::default()).await;
    let mut worker = b.client("worker").user("alice").connect().await;
    worker
        .subscribe("$share/jobs/work/#", QoS::AtLeastOnce)
        .await;
    let mut thief = b.client("thief").user("mallory").connect().await;
    thief
        .subscribe("$share/jobs/work/#", QoS::AtLeastOnce)
        .await;
    let mut publisher = b.client("pub").connect().await;
    for i in 0..4 {
        publisher
            .publish("work/x", &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    // Alice's group still gets every message: mallory's subscription is a group of its own.
    for i in 0..4 {
        assert_eq!(worker.expect_publish().await.payload, i.to_string());
        assert_eq!(thief.expect_publish().await.payload, i.to_string());
    }
}

#[tokio::test]
async fn restored_subscriptions_are_checked_against_current_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || BrokerConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..config(Limits::default())
    };
    let auth = Arc::new(HostileAuth::default());
    let b = TestBroker::with_auth(cfg(), auth.clone()).await;
    let mut alice = b
        .client("alice")
        .user("alice")
        .clean(false)
        .expiry(600)
        .connect()
        .await;
    alice
        .subscribe_with(
            vec![
                ("secret/#", SubscribeOptions::qos(QoS::AtLeastOnce)),
                ("allowed/#", SubscribeOptions::qos(QoS::AtLeastOnce)),
            ],
            None,
        )
        .await;
    alice.disconnect().await;
    let mut publisher = b.client("pub").connect().await;
    publisher
        .publish("secret/queued", "hidden", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("allowed/queued", "fine", QoS::AtLeastOnce, false)
        .await;
    b.broker.shutdown().await;
    b.crash().await;

    // Alice's rights shrink while the broker is down.
    auth.restrict_alice.store(true, Ordering::SeqCst);
    let b = TestBroker::with_auth(cfg(), auth).await;
    let (mut alice, ack) = b
        .client("alice")
        .user("alice")
        .clean(false)
        .expiry(600)
        .connect_raw()
        .await;
    assert!(ack.session_present);
    assert_eq!(alice.expect_publish().await.topic, "allowed/queued");
    let mut publisher = b.client("pub").connect().await;
    publisher
        .publish("secret/live", "hidden", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("allowed/live", "fine", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(alice.expect_publish().await.topic, "allowed/live");
    assert!(alice.sync().await.is_empty(), "nothing from secret/#");
    assert_eq!(b.broker.stats().subscriptions_revoked, 1);
    assert_eq!(b.broker.stats().subscriptions, 1);
}

// ---- 3. limits on what an authenticated client can grow ----

#[tokio::test]
async fn sessions_per_principal_are_bounded() {
    let (b, _) = start(Limits {
        max_sessions_per_principal: 2,
        ..Limits::default()
    })
    .await;
    let _one = b.client("one").user("alice").connect().await;
    let two = b
        .client("two")
        .user("alice")
        .clean(false)
        .expiry(600)
        .connect()
        .await;
    let (_, ack) = b.client("three").user("alice").connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::QuotaExceeded);
    let (_, ack) = b.client("three").user("alice").v311().connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::ServerUnavailable);
    // A persisted offline session still counts; taking over one's own does not add one.
    two.disconnect().await;
    let (_, ack) = b.client("three").user("alice").connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::QuotaExceeded);
    let (_, ack) = b
        .client("two")
        .user("alice")
        .clean(false)
        .expiry(600)
        .connect_raw()
        .await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present);
    let _bob = b.client("bob").user("bob").connect().await;
    assert_eq!(b.broker.stats().session_limit_exceeded, 3);
}

#[tokio::test]
async fn mqtt_3_1_1_persistent_sessions_expire_at_max_session_expiry() {
    let (b, _) = start(Limits {
        max_session_expiry: 1,
        ..Limits::default()
    })
    .await;
    let c = b.client("old").v311().clean(false).connect().await;
    c.disconnect().await;
    wait_until("the v3 session expired", || b.broker.stats().sessions == 0).await;
}

#[tokio::test]
async fn retained_messages_per_principal_are_bounded_in_count_and_bytes() {
    let (b, _) = start(Limits {
        max_retained_per_principal: 2,
        max_retained_bytes_per_principal: 64,
        ..Limits::default()
    })
    .await;
    let mut watcher = b.client("watch").connect().await;
    watcher.subscribe("r/#", QoS::AtLeastOnce).await;
    let mut alice = b.client("alice").user("alice").connect().await;
    let publish = |topic: &str, payload: &str| {
        let mut p = Publish::new(topic, Bytes::copy_from_slice(payload.as_bytes()));
        p.qos = QoS::AtLeastOnce;
        p.retain = true;
        p.packet_id = Some(11);
        p
    };
    assert_eq!(
        alice.publish_packet(publish("r/1", "a")).await,
        ReasonCode::Success
    );
    assert_eq!(
        alice.publish_packet(publish("r/2", "b")).await,
        ReasonCode::Success
    );
    assert_eq!(
        alice.publish_packet(publish("r/3", "c")).await,
        ReasonCode::QuotaExceeded
    );
    assert_eq!(
        alice.publish_packet(publish("r/1", &"x".repeat(64))).await,
        ReasonCode::QuotaExceeded
    );
    // Replacing one's own retained message is within the quota.
    assert_eq!(
        alice.publish_packet(publish("r/1", "a2")).await,
        ReasonCode::Success
    );
    // v3: dropped (acknowledged as usual, since v3 has no negative acks) and counted.
    let mut alice3 = b.client("alice3").user("alice").v311().connect().await;
    alice3.publish("r/4", "d", QoS::AtLeastOnce, true).await;
    // The refused messages were not routed either.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(watcher.expect_publish().await.payload);
    }
    assert_eq!(got, ["a", "b", "a2"]);
    assert!(watcher.sync().await.is_empty());
    // Another principal has its own quota.
    let mut bob = b.client("bob").user("bob").connect().await;
    assert_eq!(
        bob.publish_packet(publish("r/5", "e")).await,
        ReasonCode::Success
    );
    assert_eq!(b.broker.stats().retained_messages, 3);
    assert_eq!(b.broker.stats().retained_quota_exceeded, 3);
}

#[tokio::test]
async fn a_connect_larger_than_max_connect_size_is_refused_before_authentication() {
    let (b, auth) = start(Limits {
        max_connect_size: 1024,
        ..Limits::default()
    })
    .await;
    let mut builder = b.client("big").user("alice");
    builder.connect.password = Some(Bytes::from(vec![b'p'; 4096]));
    let stream = b.raw().await;
    let mut f =
        tokio_util::codec::Framed::new(stream, MqttCodec::new(ProtocolVersion::V5, u32::MAX));
    f.send(Packet::Connect(Box::new(builder.connect)))
        .await
        .unwrap();
    let answer = f.next().await;
    assert!(
        !matches!(answer, Some(Ok(_))),
        "closed without CONNACK, got {answer:?}"
    );
    assert_eq!(auth.calls.load(Ordering::SeqCst), 0);
    assert_eq!(b.broker.stats().connect_too_large, 1);
    // An ordinary CONNECT is fine, and bigger packets are fine after it.
    let mut alice = b.client("alice").user("alice").connect().await;
    alice
        .publish("big", &"x".repeat(4096), QoS::AtLeastOnce, false)
        .await;
    assert_eq!(auth.calls.load(Ordering::SeqCst), 1);
}

/// A journal record as the broker writes it: length, FNV-1a checksum, body.
fn journal_record(body: &[u8]) -> Vec<u8> {
    let mut sum: u32 = 0x811c_9dc5;
    for b in body {
        sum ^= u32::from(*b);
        sum = sum.wrapping_mul(0x0100_0193);
    }
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn journal_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A journal written before owners were recorded (a v3 session "forever", subscribed to
/// `k/#`): nobody resumes that session; the first CONNECT for its id starts afresh.
#[tokio::test]
async fn a_session_from_a_journal_without_owners_is_not_resumed_by_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = b"DCJRNL01".to_vec();
    let mut session = vec![1u8];
    journal_string(&mut session, "kitchen");
    session.extend_from_slice(&u32::MAX.to_le_bytes());
    journal.extend(journal_record(&session));
    let mut sub = vec![3u8];
    journal_string(&mut sub, "kitchen");
    journal_string(&mut sub, "k/#");
    sub.push(1); // QoS 1
    sub.extend_from_slice(&0u32.to_le_bytes());
    journal.extend(journal_record(&sub));
    std::fs::write(dir.path().join("broker.journal"), &journal).unwrap();

    let cfg = BrokerConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..config(Limits::default())
    };
    let b = TestBroker::with_auth(cfg, Arc::new(HostileAuth::default())).await;
    assert_eq!(b.broker.stats().sessions, 1);
    assert_eq!(b.broker.stats().subscriptions, 1);
    let (mut viewer, ack) = b
        .client("kitchen")
        .user("viewer")
        .v311()
        .clean(false)
        .connect_raw()
        .await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(
        !ack.session_present,
        "the unowned session was not handed over"
    );
    assert_eq!(b.broker.stats().subscriptions, 0);
    let mut publisher = b.client("pub").connect().await;
    publisher
        .publish("k/1", "cmd", QoS::AtLeastOnce, false)
        .await;
    assert!(viewer.sync().await.is_empty());
    // The fresh session is the viewer's now: the former owner cannot take it.
    let (_, ack) = b
        .client("kitchen")
        .user("kitchen")
        .v311()
        .clean(false)
        .connect_raw()
        .await;
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
}
