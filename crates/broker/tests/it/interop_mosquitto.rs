//! mosquitto_pub / mosquitto_sub (the Eclipse Mosquitto C client library) against our broker,
//! over MQTT 3.1.1 and 5.0.

use crate::interop::{Msg, TestBroker, publish, sub};
use broker::listener::Scheme;

const VERSIONS: [&str; 2] = ["mqttv311", "mqttv5"];

#[tokio::test]
async fn qos_0_1_2_delivery_with_the_full_handshakes() {
    let broker = TestBroker::plain().await;
    let port = broker.port(Scheme::Mqtt);
    // MQTT 3.1 (protocol name MQIsdp) too, for old clients.
    for version in ["mqttv31", "mqttv311", "mqttv5"] {
        for qos in ["0", "1", "2"] {
            let topic = format!("interop/{version}/q{qos}");
            let mut subscriber = sub(port, version, &["-t", &topic, "-q", qos, "-C", "3"]);
            subscriber.subscribed().await;
            // `-l` publishes each stdin line as one message, over one connection.
            let port_s = port.to_string();
            let args =
                crate::interop::mosq_args(&port_s, version, &["-t", &topic, "-q", qos, "-l"]);
            let publisher = crate::interop::Proc::spawn_with(
                "mosquitto_pub",
                &args,
                Some("one\ntwo\nthree\n".into()),
            );
            let pub_out = publisher.success().await;
            for payload in ["one", "two", "three"] {
                let got = subscriber.message().await;
                let expected_qos = qos.parse().unwrap();
                assert_eq!(
                    got,
                    Msg {
                        topic: topic.clone(),
                        qos: expected_qos,
                        retain: false,
                        payload: payload.into()
                    }
                );
            }
            let out = subscriber.success().await;
            let joined = out.join("\n") + "\n" + &pub_out.join("\n");
            match qos {
                "1" => {
                    assert_eq!(joined.matches("received PUBACK").count(), 3, "{joined}");
                    assert_eq!(joined.matches("sending PUBACK").count(), 3, "{joined}");
                }
                "2" => {
                    for step in [
                        "received PUBREC",
                        "received PUBCOMP",
                        "sending PUBREC",
                        "received PUBREL",
                        "sending PUBCOMP",
                    ] {
                        assert_eq!(joined.matches(step).count(), 3, "{step} in:\n{joined}");
                    }
                }
                _ => assert!(
                    !joined.contains("PUBACK") && !joined.contains("PUBREC"),
                    "{joined}"
                ),
            }
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn retained_messages_are_stored_replayed_and_deleted() {
    let broker = TestBroker::plain().await;
    let port = broker.port(Scheme::Mqtt);
    for version in VERSIONS {
        let topic = format!("interop/retained/{version}");
        let probe = format!("interop/probe/{version}");
        publish(
            port,
            version,
            &["-t", &topic, "-m", "kept", "-r", "-q", "1"],
        )
        .await;

        let mut late = sub(port, version, &["-t", &topic, "-C", "1"]);
        assert_eq!(
            late.message().await,
            Msg {
                topic: topic.clone(),
                qos: 0,
                retain: true,
                payload: "kept".into()
            }
        );
        late.success().await;

        // An empty retained message deletes it. To prove nothing is replayed without waiting
        // for a timeout, subscribe to the deleted topic and then to a probe topic: retained
        // messages come in subscription order, so the first one seen must be the probe.
        publish(port, version, &["-t", &topic, "-n", "-r", "-q", "1"]).await;
        publish(port, version, &["-t", &probe, "-m", "probe", "-r"]).await;
        let mut check = sub(port, version, &["-t", &topic, "-t", &probe, "-C", "1"]);
        assert_eq!(check.message().await.payload, "probe");
        check.success().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn shared_subscriptions_split_messages_between_members() {
    let broker = TestBroker::plain().await;
    let port = broker.port(Scheme::Mqtt);
    for version in VERSIONS {
        let topic = format!("interop/shared/{version}");
        let filter = format!("$share/workers/{topic}");
        let mut a = sub(port, version, &["-t", &filter, "-q", "1"]);
        let mut b = sub(port, version, &["-t", &filter, "-q", "1"]);
        a.subscribed().await;
        b.subscribed().await;
        let lines: String = (0..10).map(|i| format!("m{i}\n")).collect();
        let port_s = port.to_string();
        let args = crate::interop::mosq_args(&port_s, version, &["-t", &topic, "-q", "1", "-l"]);
        crate::interop::Proc::spawn_with("mosquitto_pub", &args, Some(lines))
            .success()
            .await;

        // Round-robin between two connected members: five each, none twice.
        let mut got = Vec::new();
        for member in [&mut a, &mut b] {
            for _ in 0..5 {
                got.push(member.message().await.payload);
            }
        }
        got.sort();
        let mut expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        expected.sort();
        assert_eq!(got, expected);
    }
    broker.stop().await;
}
