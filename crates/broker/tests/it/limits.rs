use broker::{BrokerConfig, Limits};
use codec::{QoS, ReasonCode};

use crate::helpers::*;

#[tokio::test]
async fn max_connections_refused_with_quota_exceeded() {
    let config = BrokerConfig {
        limits: Limits {
            max_connections: 1,
            ..Limits::default()
        },
        ..BrokerConfig::default()
    };
    let b = TestBroker::with_config(config).await;
    let mut first = b.client("one").connect().await;
    let (_, ack) = b.client("two").v5().connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::QuotaExceeded);
    let (_, ack) = b.client("three").v311().connect_raw().await;
    assert_eq!(ack.reason_code.to_connect_return_code() as u8, 3);
    assert!(first.sync().await.is_empty());
}

#[tokio::test]
async fn queue_overflow_drops_newest_and_counts() {
    let config = BrokerConfig {
        limits: Limits {
            max_queued_messages: 5,
            ..Limits::default()
        },
        ..BrokerConfig::default()
    };
    let b = TestBroker::with_config(config).await;
    let mut c = b.client("slow").clean(false).expiry(60).connect().await;
    c.subscribe("q", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut publ = b.client("pub").connect().await;
    for i in 0..8 {
        publ.publish("q", &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    assert_eq!(b.broker.stats().messages_dropped, 3);
    let mut c = b.client("slow").clean(false).expiry(60).connect().await;
    for i in 0..5 {
        assert_eq!(c.expect_publish().await.payload, i.to_string());
    }
    c.expect_nothing(100).await;
}
