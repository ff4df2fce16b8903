use std::time::Duration;

use broker::{BrokerConfig, Limits};
use codec::{Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

#[tokio::test]
async fn mqtt_3_1_4_2_second_connect_is_protocol_error() {
    let b = TestBroker::start().await;
    let mut c = b.client("twice").connect().await;
    c.send(Packet::Connect(Box::new(Connect::new(
        ProtocolVersion::V5,
        "twice",
    ))))
    .await;
    let d = c.expect_disconnect().await.expect("v5 DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::ProtocolError);
}

#[tokio::test]
async fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let b = TestBroker::start().await;
    let mut s = b.raw().await;
    s.write_all(&[0xC0, 0x00]).await.unwrap(); // PINGREQ
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the broker must close without answering");
    assert_eq!(b.broker.stats().connections_refused, 1);
}

#[tokio::test]
async fn mqtt_3_1_2_2_unsupported_protocol_level_gets_return_code_1() {
    let b = TestBroker::start().await;
    let mut s = b.raw().await;
    // CONNECT, protocol "MQTT" level 9.
    s.write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 9, 2, 0, 60, 0, 0])
        .await
        .unwrap();
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf[..4]).await.unwrap();
    assert_eq!(
        &buf[..4],
        &[0x20, 2, 0, 1],
        "v3.1.1 CONNACK with return code 1"
    );
}

#[tokio::test]
async fn mqtt_3_1_3_8_v311_empty_client_id_needs_clean_session() {
    let b = TestBroker::start().await;
    let (_, ack) = b.client("").v311().clean(false).connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    let (_, ack) = b.client("").v311().clean(true).connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let (_, ack) = b.client("").v31().connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
}

#[tokio::test]
async fn mqtt_3_2_2_16_v5_empty_client_id_is_assigned() {
    let b = TestBroker::start().await;
    let (_, ack) = b.client("").v5().connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let id = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!id.is_empty());
    assert_eq!(
        ack.properties.receive_maximum,
        Some(Limits::default().receive_maximum)
    );
    assert_eq!(
        ack.properties.maximum_packet_size,
        Some(Limits::default().max_packet_size)
    );
}

#[tokio::test]
async fn mqtt_3_2_2_bad_credentials_and_not_authorized_codes() {
    let b = TestBroker::start().await;
    let (_, ack) = b.client("a").v5().user("bad").connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword);
    let (_, ack) = b.client("a").v311().user("bad").connect_raw().await;
    assert_eq!(ack.reason_code.to_connect_return_code() as u8, 4);
    let (_, ack) = b.client("a").v5().user("banned").connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    assert!(ack.properties.reason_string.unwrap().contains("revoked"));
    let (_, ack) = b.client("a").v311().user("banned").connect_raw().await;
    assert_eq!(ack.reason_code.to_connect_return_code() as u8, 5);
    assert_eq!(b.broker.stats().connections_refused, 4);
}

#[tokio::test]
async fn mqtt_3_1_4_3_takeover_disconnects_old_connection_with_0x8e() {
    let b = TestBroker::start().await;
    let mut old = b.client("same").connect().await;
    let mut new = b.client("same").clean(false).connect().await;
    let d = old
        .expect_disconnect()
        .await
        .expect("DISCONNECT to the old connection");
    assert_eq!(d.reason_code, ReasonCode::SessionTakenOver);
    new.sync().await;
    wait_until("one client connected", || {
        b.broker.stats().clients_connected == 1
    })
    .await;
}

#[tokio::test]
async fn mqtt_3_1_2_22_connect_deadline_closes_silent_connections() {
    let config = BrokerConfig {
        limits: Limits {
            connect_timeout: Duration::from_millis(200),
            ..Limits::default()
        },
        ..BrokerConfig::default()
    };
    let b = TestBroker::with_config(config).await;
    let mut s = b.raw().await;
    let mut buf = [0u8; 4];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("closed by the deadline")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn authenticator_deadline_answers_server_unavailable() {
    let config = BrokerConfig {
        limits: Limits {
            connect_timeout: Duration::from_millis(200),
            ..Limits::default()
        },
        ..BrokerConfig::default()
    };
    let b = TestBroker::with_config(config).await;
    let (_, ack) = b.client("s").user("slow").connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::ServerUnavailable);
}

#[tokio::test]
async fn mqtt_3_1_2_24_keepalive_timeout_disconnects() {
    let b = TestBroker::start().await;
    let mut c = b.client("ka").v5().keep_alive(1).connect().await;
    let started = tokio::time::Instant::now();
    let d = c.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::KeepAliveTimeout);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test]
async fn mqtt_3_2_2_21_server_keep_alive_caps_client_keep_alive() {
    let config = BrokerConfig {
        limits: Limits {
            max_keepalive: 30,
            ..Limits::default()
        },
        ..BrokerConfig::default()
    };
    let b = TestBroker::with_config(config).await;
    let (_, ack) = b.client("cap").v5().keep_alive(600).connect_raw().await;
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    let (_, ack) = b.client("ok").v5().keep_alive(20).connect_raw().await;
    assert_eq!(ack.properties.server_keep_alive, None);
}

#[tokio::test]
async fn mqtt_3_1_4_3_takeover_with_clean_start_discards_the_old_session() {
    let b = TestBroker::start().await;
    let mut old = b.client("same").clean(false).expiry(60).connect().await;
    old.subscribe("old/#", QoS::AtLeastOnce).await;
    let (mut new, ack) = b.client("same").clean(true).connect_raw().await;
    assert!(!ack.session_present);
    let d = old
        .expect_disconnect()
        .await
        .expect("DISCONNECT to the old connection");
    assert_eq!(d.reason_code, ReasonCode::SessionTakenOver);
    assert_eq!(b.broker.stats().subscriptions, 0);
    let mut publ = b.client("pub").connect().await;
    publ.publish("old/x", "x", QoS::AtLeastOnce, false).await;
    assert!(new.sync().await.is_empty());
    wait_until("two clients connected", || {
        b.broker.stats().clients_connected == 2
    })
    .await;
}

#[tokio::test]
async fn mqtt_3_1_v31_and_v311_clients_connect_and_exchange_messages() {
    let b = TestBroker::start().await;
    let mut old = b.client("v31").v31().connect().await;
    old.subscribe("mix", QoS::AtLeastOnce).await;
    let mut mid = b.client("v311").v311().connect().await;
    mid.publish("mix", "hi", QoS::AtLeastOnce, false).await;
    let p = old.expect_publish().await;
    assert_eq!((p.qos, &p.payload[..]), (QoS::AtLeastOnce, &b"hi"[..]));
    let (_, ack) = b
        .client("this-id-is-longer-than-23-chars")
        .v31()
        .connect_raw()
        .await;
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
}

#[tokio::test]
async fn mqtt_4_12_0_1_unsupported_authentication_method_is_0x8c() {
    let b = TestBroker::start().await;
    let mut builder = b.client("auth");
    builder.connect.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let (_, ack) = builder.connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::BadAuthenticationMethod);
}
