use std::time::Duration;

use client::{
    ClientError, ClientOptions, DisconnectReason, Event, ProtocolVersion, Publish, QoS, ReasonCode,
};
use codec::{ConnAck, Packet};

use crate::{
    fake::{self, Config, Seen},
    next_event,
};

fn options(port: u16, version: ProtocolVersion) -> ClientOptions {
    let mut o = ClientOptions::new(format!("mqtt://127.0.0.1:{port}"), "test-client");
    o.version = version;
    o
}

#[tokio::test]
async fn publish_and_receive_all_qos_levels_v3_and_v5() {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let (port, mut seen) = fake::start(Config::default()).await;
        let (client, mut events) = client::connect(&options(port, version)).await.unwrap();
        assert_eq!(client.session().version, version);
        assert_eq!(
            client.subscribe("t/#", QoS::ExactlyOnce).await.unwrap(),
            ReasonCode::GrantedQoS2
        );
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let payload = format!("m{}", qos.as_u8());
            client
                .publish("t/a", payload.clone(), qos, false)
                .await
                .unwrap();
            let Event::Publish(p) = next_event(&mut events).await else {
                panic!("publish expected")
            };
            assert_eq!(
                (&*p.topic, &p.payload[..], p.qos),
                ("t/a", payload.as_bytes(), qos)
            );
        }
        // The fake re-sent the QoS 2 message with DUP; it must not be delivered twice, and
        // the inbound QoS 1 and 2 flows must have been completed by the client.
        fake::expect(&mut seen, |s| {
            matches!(s, Seen::Packet(p) if matches!(**p, Packet::PubAck(_))).then_some(())
        })
        .await;
        fake::expect(&mut seen, |s| {
            matches!(s, Seen::Packet(p) if matches!(**p, Packet::PubComp(_))).then_some(())
        })
        .await;
        client
            .publish("t/b", "after", QoS::AtMostOnce, false)
            .await
            .unwrap();
        let Event::Publish(p) = next_event(&mut events).await else {
            panic!("publish expected")
        };
        assert_eq!(
            &*p.topic, "t/b",
            "QoS 2 message delivered twice ({version})"
        );
        client.disconnect().await.unwrap();
        fake::expect(&mut seen, |s| {
            matches!(s, Seen::Packet(p) if matches!(**p, Packet::Disconnect(_))).then_some(())
        })
        .await;
        assert_eq!(
            next_event(&mut events).await,
            Event::Disconnected(DisconnectReason::Local)
        );
    }
}

#[tokio::test]
async fn connect_sends_options() {
    let (port, mut seen) = fake::start(Config::default()).await;
    let mut o = options(port, ProtocolVersion::V5);
    o.username = Some("alice".into());
    o.password = Some("pw".into());
    o.keep_alive = 7;
    o.session_expiry = Some(300);
    o.clean_start = false;
    let (_client, _events) = client::connect(&o).await.unwrap();
    let connect = fake::expect(&mut seen, |s| match s {
        Seen::Packet(p) => match &**p {
            Packet::Connect(c) => Some(c.clone()),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(connect.client_id, "test-client");
    assert_eq!(connect.username.as_deref(), Some("alice"));
    assert_eq!(connect.password.as_deref(), Some(&b"pw"[..]));
    assert_eq!(connect.keep_alive, 7);
    assert!(!connect.clean_start);
    assert_eq!(connect.properties.session_expiry_interval, Some(300));
}

#[tokio::test]
async fn refused_connack_is_a_typed_error() {
    let config = Config {
        connack: ConnAck::new(ReasonCode::BadUserNameOrPassword, false),
        ..Config::default()
    };
    let (port, _seen) = fake::start(config.clone()).await;
    let err = client::connect(&options(port, ProtocolVersion::V5))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: ReasonCode::BadUserNameOrPassword,
                ..
            }
        ),
        "{err}"
    );
    // v3: return code 4 maps to the same reason code.
    let (port, _seen) = fake::start(config).await;
    let err = client::connect(&options(port, ProtocolVersion::V3_1_1))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: ReasonCode::BadUserNameOrPassword,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn connection_refused_names_the_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = client::connect(&options(port, ProtocolVersion::V5))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn subscribe_failure_codes_are_returned() {
    let (port, _seen) = fake::start(Config::default()).await;
    let (client, _events) = client::connect(&options(port, ProtocolVersion::V5))
        .await
        .unwrap();
    assert_eq!(
        client
            .subscribe("forbidden/x", QoS::AtMostOnce)
            .await
            .unwrap(),
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        client
            .unsubscribe(vec!["a".into(), "b".into()])
            .await
            .unwrap(),
        vec![ReasonCode::Success; 2]
    );
}

#[tokio::test]
async fn v3_unsubscribe_reports_success_per_filter() {
    let (port, _seen) = fake::start(Config::default()).await;
    let (client, _events) = client::connect(&options(port, ProtocolVersion::V3_1_1))
        .await
        .unwrap();
    assert_eq!(
        client
            .unsubscribe(vec!["a".into(), "b".into()])
            .await
            .unwrap(),
        vec![ReasonCode::Success; 2]
    );
}

#[tokio::test]
async fn rejected_publish_is_a_typed_error() {
    let (port, _seen) = fake::start(Config::default()).await;
    let (client, _events) = client::connect(&options(port, ProtocolVersion::V5))
        .await
        .unwrap();
    let err = client
        .publish("reject", "x", QoS::AtLeastOnce, false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Rejected {
                code: ReasonCode::NotAuthorized,
                ..
            }
        ),
        "{err}"
    );
    // The connection survives.
    client
        .publish("ok", "x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
}

#[tokio::test]
async fn keep_alive_sends_pingreq() {
    let (port, mut seen) = fake::start(Config::default()).await;
    let mut o = options(port, ProtocolVersion::V3_1_1);
    o.keep_alive = 1;
    let (client, _events) = client::connect(&o).await.unwrap();
    fake::expect(&mut seen, |s| {
        matches!(s, Seen::Packet(p) if matches!(**p, Packet::PingReq)).then_some(())
    })
    .await;
    assert!(client.is_connected());
}

#[tokio::test]
async fn missing_pingresp_ends_the_connection() {
    let (port, _seen) = fake::start(Config {
        answer_pings: false,
        ..Config::default()
    })
    .await;
    let mut o = options(port, ProtocolVersion::V5);
    o.keep_alive = 1;
    let (client, mut events) = client::connect(&o).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        Event::Disconnected(DisconnectReason::KeepAliveTimeout)
    );
    let err = client
        .publish("a", "b", QoS::AtMostOnce, false)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Disconnected), "{err}");
}

#[tokio::test]
async fn server_disconnect_is_reported_and_pending_publishes_fail() {
    let (port, _seen) = fake::start(Config {
        ack_batch: 1000,
        ..Config::default()
    })
    .await;
    let (client, mut events) = client::connect(&options(port, ProtocolVersion::V5))
        .await
        .unwrap();
    let mut held = Publish::new("held", "x");
    held.qos = QoS::AtLeastOnce;
    let delivery = client.publish_message(held).await.unwrap();
    client
        .publish("kick", "", QoS::AtMostOnce, false)
        .await
        .unwrap();
    let Event::Disconnected(DisconnectReason::Server { code, .. }) = next_event(&mut events).await
    else {
        panic!("server disconnect expected")
    };
    assert_eq!(code, ReasonCode::AdministrativeAction);
    assert!(matches!(delivery.await, Err(ClientError::Disconnected)));
}

#[tokio::test]
async fn receive_maximum_limits_messages_in_flight() {
    let mut connack = ConnAck::new(ReasonCode::Success, false);
    connack.properties.receive_maximum = Some(2);
    let (port, mut seen) = fake::start(Config {
        connack,
        ack_batch: 2,
        ..Config::default()
    })
    .await;
    let (client, _events) = client::connect(&options(port, ProtocolVersion::V5))
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..6 {
        let mut p = Publish::new("q", format!("{i}"));
        p.qos = QoS::AtLeastOnce;
        deliveries.push(client.publish_message(p).await.unwrap());
    }
    for d in deliveries {
        tokio::time::timeout(Duration::from_secs(5), d)
            .await
            .unwrap()
            .unwrap();
    }
    client.disconnect().await.unwrap();
    let mut publishes = 0;
    while let Some(s) = seen.recv().await {
        match s {
            Seen::ReceiveMaximumExceeded(n) => {
                panic!("{n} messages in flight with receive maximum 2")
            }
            Seen::Packet(p) if matches!(*p, Packet::Publish(_)) => publishes += 1,
            Seen::Packet(p) if matches!(*p, Packet::Disconnect(_)) => break,
            _ => {}
        }
    }
    assert_eq!(publishes, 6);
}

#[tokio::test]
async fn dropping_the_last_handle_disconnects_cleanly() {
    let (port, mut seen) = fake::start(Config::default()).await;
    let (client, mut events) = client::connect(&options(port, ProtocolVersion::V3_1_1))
        .await
        .unwrap();
    drop(client);
    fake::expect(&mut seen, |s| {
        matches!(s, Seen::Packet(p) if matches!(**p, Packet::Disconnect(_))).then_some(())
    })
    .await;
    assert_eq!(
        next_event(&mut events).await,
        Event::Disconnected(DisconnectReason::Local)
    );
}

#[tokio::test]
async fn slow_consumer_keeps_publishing_and_loses_nothing() {
    let (port, _seen) = fake::start(Config::default()).await;
    let mut o = options(port, ProtocolVersion::V5);
    o.event_capacity = 2;
    let (client, mut events) = client::connect(&o).await.unwrap();
    client.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
    // Far more than the event capacity and the command queue (256): if a full event channel
    // blocked the connection, these sends would hang.
    let total = 600;
    tokio::time::timeout(crate::WAIT, async {
        for i in 0..total {
            let mut p = Publish::new("t/x", format!("{i}"));
            p.qos = QoS::AtLeastOnce;
            client.publish_detached(p).await.unwrap();
        }
    })
    .await
    .expect("publishing blocked while the application was not reading events");
    for i in 0..total {
        let Event::Publish(p) = next_event(&mut events).await else {
            panic!("message {i} expected")
        };
        assert_eq!(p.payload, format!("{i}").into_bytes());
    }
}

#[tokio::test]
async fn stray_acknowledgements_are_tolerated() {
    let (port, mut seen) = fake::start(Config::default()).await;
    let (client, _events) = client::connect(&options(port, ProtocolVersion::V5))
        .await
        .unwrap();
    client
        .publish("stray", "x", QoS::AtMostOnce, false)
        .await
        .unwrap();
    // The unknown PUBREC is answered with PUBREL 0x92 so the broker's flow can finish.
    let rel = fake::expect(&mut seen, |s| match s {
        Seen::Packet(p) => match &**p {
            Packet::PubRel(a) => Some(a.clone()),
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(
        (rel.packet_id, rel.reason_code),
        (997, ReasonCode::PacketIdentifierNotFound)
    );
    client
        .publish("after", "x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert!(client.is_connected());
}
