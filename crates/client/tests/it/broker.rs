//! Interop with the real broker (crates/broker), over TCP on 127.0.0.1.

use std::sync::Arc;

use broker::{Broker, BrokerConfig, ConnInfo, auth::Transport, password_file::AnonymousAuth};
use client::{ClientOptions, Event, LastWill, ProtocolVersion, QoS, ReasonCode, WillProperties};
use tokio::net::TcpListener;

use crate::next_event;

async fn start_broker() -> u16 {
    let broker = Broker::open(BrokerConfig::default(), Arc::new(AnonymousAuth))
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let broker = broker.clone();
            tokio::spawn(async move {
                broker
                    .serve_connection(stream, ConnInfo::new(peer, Transport::Tcp))
                    .await
            });
        }
    });
    port
}

fn options(port: u16, id: &str, version: ProtocolVersion) -> ClientOptions {
    let mut o = ClientOptions::new(format!("mqtt://127.0.0.1:{port}"), id);
    o.version = version;
    o
}

#[tokio::test]
async fn pub_sub_all_qos_with_the_broker() {
    let port = start_broker().await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let (sub, mut events) = client::connect(&options(port, "sub", version))
            .await
            .unwrap();
        assert_eq!(
            sub.subscribe("a/+", QoS::ExactlyOnce).await.unwrap(),
            ReasonCode::GrantedQoS2
        );
        let (publisher, _e) = client::connect(&options(port, "pub", version))
            .await
            .unwrap();
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            publisher
                .publish("a/b", vec![qos.as_u8()], qos, false)
                .await
                .unwrap();
            let Event::Publish(p) = next_event(&mut events).await else {
                panic!("message expected")
            };
            assert_eq!(
                (&*p.topic, &p.payload[..], p.qos),
                ("a/b", &[qos.as_u8()][..], qos)
            );
        }
        assert_eq!(
            sub.unsubscribe(vec!["a/+".into()]).await.unwrap(),
            vec![ReasonCode::Success]
        );
        sub.disconnect().await.unwrap();
        publisher.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn retained_message_and_will_with_the_broker() {
    let port = start_broker().await;
    let (publisher, _e) = client::connect(&options(port, "p", ProtocolVersion::V5))
        .await
        .unwrap();
    publisher
        .publish("status/p", "online", QoS::AtLeastOnce, true)
        .await
        .unwrap();

    let mut o = options(port, "dying", ProtocolVersion::V3_1_1);
    o.will = Some(LastWill {
        topic: "status/dying".into(),
        payload: "offline".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    let (dying, _e) = client::connect(&o).await.unwrap();

    let (sub, mut events) = client::connect(&options(port, "s", ProtocolVersion::V5))
        .await
        .unwrap();
    sub.subscribe("status/#", QoS::AtLeastOnce).await.unwrap();
    let Event::Publish(p) = next_event(&mut events).await else {
        panic!("retained expected")
    };
    assert_eq!(
        (&*p.topic, &p.payload[..], p.retain),
        ("status/p", &b"online"[..], true)
    );

    dying.abort().await;
    let Event::Publish(p) = next_event(&mut events).await else {
        panic!("will expected")
    };
    assert_eq!(
        (&*p.topic, &p.payload[..]),
        ("status/dying", &b"offline"[..])
    );
}
