use broker::{Message, QoS};

use crate::helpers::*;

#[tokio::test]
async fn local_client_publishes_and_subscribes_with_retained_first() {
    let b = TestBroker::start().await;
    let local = b.broker.local_client("server:twin");
    local.publish(
        Message::new("devices/k/status", "online")
            .with_retain(true)
            .with_qos(QoS::AtLeastOnce),
    );
    let mut sub = local.subscribe("devices/+/status");
    let m = sub.recv().await.unwrap();
    assert_eq!(
        (&*m.topic, &m.payload[..], m.retain),
        ("devices/k/status", &b"online"[..], true)
    );
    let mut dev = b.client("k").connect().await;
    dev.publish("devices/k/status", "offline", QoS::AtLeastOnce, true)
        .await;
    let m = sub.recv().await.unwrap();
    assert_eq!(
        (&m.payload[..], m.retain, m.qos),
        (&b"offline"[..], false, QoS::AtLeastOnce)
    );
    // Network subscribers see in-process publishes.
    dev.subscribe("devices/k/set/#", QoS::AtLeastOnce).await;
    local.publish(Message::new("devices/k/set/led", "true").with_qos(QoS::AtLeastOnce));
    assert_eq!(dev.expect_publish().await.payload, "true");
    drop(sub);
    assert_eq!(b.broker.stats().subscriptions, 1);
}
