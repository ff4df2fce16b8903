//! Flow control against paho-mqtt: a v5 client with a small Receive Maximum publishes a burst
//! at QoS 1 and 2 to its own subscription; the broker must keep at most that many QoS 1/2
//! messages in flight towards it (MQTT-3.3.4-9) and deliver every one, in order.

use broker::listener::Scheme;

use crate::interop::{Proc, TestBroker, py_script, s};

#[tokio::test]
async fn mqtt_3_3_4_9_paho_with_small_receive_maximum_gets_every_message() {
    let broker = TestBroker::plain().await;
    let port = broker.port(Scheme::Mqtt).to_string();
    let script = py_script("paho_flow.py");
    for receive_maximum in ["1", "2"] {
        let topic = format!("interop/flow/{receive_maximum}");
        let args = [
            s(&script),
            "--port",
            &port,
            "--receive-maximum",
            receive_maximum,
            "--count",
            "200",
            "--topic",
            &topic,
        ];
        let out = Proc::spawn("python3", &args).success().await;
        assert!(out.iter().any(|l| l == "FLOW OK 200"), "{out:?}");
    }
    broker.stop().await;
}
