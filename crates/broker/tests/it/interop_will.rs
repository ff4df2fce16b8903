//! Wills: a paho-mqtt client killed with SIGKILL (no DISCONNECT) has its will published.

use broker::listener::Scheme;

use crate::interop::{Proc, TestBroker, py_script, s, sub};

#[tokio::test]
async fn will_is_published_when_a_paho_client_is_killed() {
    let broker = TestBroker::plain().await;
    let port = broker.port(Scheme::Mqtt);
    let script = py_script("paho_will.py");
    for (version, v5) in [("mqttv311", false), ("mqttv5", true)] {
        let topic = format!("interop/will/{version}");
        let mut watcher = sub(port, version, &["-t", &topic, "-q", "1", "-C", "1"]);
        watcher.subscribed().await;

        let port_s = port.to_string();
        let mut args = vec![
            s(&script),
            "--port",
            &port_s,
            "--topic",
            &topic,
            "--payload",
            "gone",
        ];
        if v5 {
            args.push("--v5");
        }
        let mut doomed = Proc::spawn("python3", &args);
        doomed.expect("CONNECTED", |l| l == "CONNECTED").await;
        let pid = doomed.pid();
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let (status, _) = doomed.finish().await;
        assert!(!status.success());

        let will = watcher.message().await;
        assert_eq!(
            (will.topic.as_str(), will.payload.as_str(), will.qos),
            (topic.as_str(), "gone", 1)
        );
        watcher.success().await;
    }
    broker.stop().await;
}
