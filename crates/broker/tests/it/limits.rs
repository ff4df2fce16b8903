use broker::{BrokerConfig, Limits};
use codec::{Publish, QoS, ReasonCode};

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
    assert!(c.sync().await.is_empty());
}

/// A subscriber whose queue is held up behind an unacknowledged QoS 1 message (Receive
/// Maximum 1): one QoS 1 message in flight, a second one queued first, then whatever the
/// test publishes to `q0` queues behind them.
async fn held_up_subscriber(b: &TestBroker, publ: &mut TestClient) -> (TestClient, Publish) {
    let mut sub = b.client("held").receive_maximum(1).connect().await;
    sub.subscribe("q1", QoS::AtLeastOnce).await;
    sub.subscribe("q0", QoS::AtMostOnce).await;
    publ.publish("q1", "first", QoS::AtLeastOnce, false).await;
    publ.publish("q1", "second", QoS::AtLeastOnce, false).await;
    let first = sub.expect_publish_noack().await;
    (sub, first)
}

#[tokio::test]
async fn qos0_burst_to_a_connected_subscriber_is_bounded_by_bytes_not_by_count() {
    let config = BrokerConfig {
        limits: Limits {
            max_queued_messages: 5,
            ..Limits::default()
        },
        ..BrokerConfig::default()
    };
    let b = TestBroker::with_config(config).await;
    let mut publ = b.client("pub").connect().await;
    let (mut sub, first) = held_up_subscriber(&b, &mut publ).await;
    for i in 0..50 {
        publ.publish("q0", &i.to_string(), QoS::AtMostOnce, false)
            .await;
    }
    // The publisher's round trip proves all 50 were routed.
    assert!(publ.sync().await.is_empty());
    assert_eq!(b.broker.stats().messages_dropped, 0);
    sub.ack(&first).await;
    assert_eq!(sub.expect_publish().await.payload, "second");
    for i in 0..50 {
        assert_eq!(sub.expect_publish().await.payload, i.to_string());
    }
    assert!(sub.sync().await.is_empty());
}

#[tokio::test]
async fn queue_above_max_queued_bytes_drops_newest_and_counts() {
    let config = BrokerConfig {
        limits: Limits {
            max_queued_bytes: 10_000,
            ..Limits::default()
        },
        ..BrokerConfig::default()
    };
    let b = TestBroker::with_config(config).await;
    let mut publ = b.client("pub").connect().await;
    let (mut sub, first) = held_up_subscriber(&b, &mut publ).await;
    // "second" (small) and two of these fit in 10,000 bytes with their bookkeeping; a
    // third does not, whatever the bookkeeping costs.
    let big = "x".repeat(4000);
    for i in 0..5 {
        publ.publish("q0", &format!("{i}{big}"), QoS::AtMostOnce, false)
            .await;
    }
    assert!(publ.sync().await.is_empty());
    assert_eq!(b.broker.stats().messages_dropped, 3);
    sub.ack(&first).await;
    assert_eq!(sub.expect_publish().await.payload, "second");
    for i in 0..2 {
        assert_eq!(
            sub.expect_publish().await.payload[..1],
            *i.to_string().as_bytes()
        );
    }
    assert!(sub.sync().await.is_empty());
    // Drained: new messages are queued again.
    publ.publish("q0", "after", QoS::AtMostOnce, false).await;
    assert_eq!(sub.expect_publish().await.payload, "after");
}
