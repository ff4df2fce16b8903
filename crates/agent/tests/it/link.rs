//! The agent against the broker over TLS: commands, acks, inputs, presence, restart, outage.

use std::time::Duration;

use broker::{Message, QoS};
use serde_json::json;

use crate::harness::{TestBroker, config, json, recv_until, start_agent};

const T: Duration = Duration::from_secs(20);

const LED_BUTTON: &str = r#"
[gpio]
backend = "simulated"
[[output]]
name = "led"
line = "GPIO17"
[[input]]
name = "button"
line = "GPIO27"
"#;

fn command(topic: &str, body: serde_json::Value) -> Message {
    Message::new(topic, serde_json::to_vec(&body).unwrap()).with_qos(QoS::AtLeastOnce)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_inputs_presence_and_restart() {
    let broker = TestBroker::start().await;
    let local = broker.broker.local_client("server:test");
    let mut sub = local.subscribe("devices/d1/#");
    let dir = tempfile::tempdir().unwrap();
    let (agent, sim) = start_agent(config(LED_BUTTON, dir.path()), broker.bundle("d1")).await;

    let meta = recv_until(&mut sub, T, |m| &*m.topic == "devices/d1/meta").await;
    assert_eq!(
        json(&meta)["outputs"],
        json!([{"name": "led", "type": "bool"}])
    );
    recv_until(&mut sub, T, |m| {
        &*m.topic == "devices/d1/status" && &m.payload[..] == b"online"
    })
    .await;
    // Retained for whoever subscribes later.
    let mut late = local.subscribe("devices/d1/meta");
    let meta = recv_until(&mut late, T, |_| true).await;
    assert!(meta.retain);
    assert_eq!(
        json(&meta)["inputs"],
        json!([{"name": "button", "type": "bool"}])
    );
    assert!(agent.wait_connected(T).await);

    // A command: the line goes high, the state read back from it carries the command id.
    local.publish(command(
        "devices/d1/set/led",
        json!({"value": true, "id": "c1"}),
    ));
    assert!(
        sim.wait_level("led", true, T).await,
        "the simulated LED line went high"
    );
    let state = recv_until(&mut sub, T, |m| {
        &*m.topic == "devices/d1/state/led" && json(m)["cmd"] == "c1"
    })
    .await;
    assert_eq!(json(&state)["value"], json!(true));
    let ack = recv_until(&mut sub, T, |m| &*m.topic == "devices/d1/ack").await;
    assert_eq!(
        json(&ack),
        json!({"id": "c1", "name": "led", "ok": true, "value": true})
    );

    // Invalid commands are answered with an error and never applied.
    local.publish(command(
        "devices/d1/set/led",
        json!({"value": "off", "id": "c2"}),
    ));
    let ack = recv_until(&mut sub, T, |m| &*m.topic == "devices/d1/ack").await;
    let ack = json(&ack);
    assert_eq!(
        (ack["id"].as_str(), ack["ok"].as_bool()),
        (Some("c2"), Some(false)),
        "{ack}"
    );
    assert!(
        ack["error"].as_str().unwrap().contains("expected a bool"),
        "{ack}"
    );
    local.publish(command(
        "devices/d1/set/fan",
        json!({"value": true, "id": "c3"}),
    ));
    let ack = json(&recv_until(&mut sub, T, |m| &*m.topic == "devices/d1/ack").await);
    assert_eq!(ack["ok"], json!(false));
    assert!(
        ack["error"]
            .as_str()
            .unwrap()
            .contains("unknown output 'fan'"),
        "{ack}"
    );
    local.publish(command(
        "devices/d1/set/led",
        json!({"valeur": false, "id": "c4"}),
    ));
    let ack = json(&recv_until(&mut sub, T, |m| &*m.topic == "devices/d1/ack").await);
    assert_eq!(
        (ack["id"].as_str(), ack["ok"].as_bool()),
        (Some("c4"), Some(false)),
        "{ack}"
    );
    assert_eq!(sim.level("led"), Some(true), "the line is unchanged");

    // An input edge becomes an event (with a sequence id) and a state.
    sim.drive_input("button", true).unwrap();
    // The state goes out directly, the event through the outbox: either may come first.
    let (mut event, mut state) = (None, None);
    while event.is_none() || state.is_none() {
        let m = recv_until(&mut sub, T, |m| m.topic.ends_with("/button")).await;
        match &*m.topic {
            "devices/d1/event/button" => event = Some(json(&m)),
            "devices/d1/state/button" => state = Some(json(&m)),
            other => panic!("unexpected {other}"),
        }
    }
    let (event, state) = (event.unwrap(), state.unwrap());
    assert_eq!(
        (event["value"].as_bool(), event["edge"].as_str()),
        (Some(true), Some("rising")),
        "{event}"
    );
    assert!(event["id"].as_u64().unwrap() > 0);
    assert_eq!(state["value"], json!(true));

    // A clean stop says offline.
    agent.shutdown().await;
    recv_until(&mut sub, T, |m| {
        &*m.topic == "devices/d1/status" && &m.payload[..] == b"offline"
    })
    .await;
    drop(sim);

    // Restart (a power cut for the LED): the desired state is re-applied and reported.
    let (agent, sim) = start_agent(config(LED_BUTTON, dir.path()), broker.bundle("d1")).await;
    assert_eq!(
        sim.level("led"),
        Some(true),
        "the LED is back on at start, before any command"
    );
    let state = recv_until(&mut sub, T, |m| &*m.topic == "devices/d1/state/led").await;
    assert_eq!(json(&state)["value"], json!(true));
    recv_until(&mut sub, T, |m| {
        &*m.topic == "devices/d1/status" && &m.payload[..] == b"online"
    })
    .await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_readings_arrive_exactly_once_in_order() {
    const READINGS: u64 = 10_000;
    let mut broker = TestBroker::start().await;
    let local = broker.broker.local_client("server:test");
    // One subscription, so that telemetry and events keep their relative order.
    let mut all = local.subscribe("devices/d1/#");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = all.recv().await {
            let is_event = m.topic.contains("/event/");
            if is_event || m.topic.contains("/telemetry/") {
                let _ = tx.send((is_event, json(&m)["id"].as_i64().unwrap()));
            }
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let proc_dir = dir.path().join("proc");
    std::fs::create_dir_all(&proc_dir).unwrap();
    // Five fast sensors that read a fake /proc/loadavg: they produce nothing until the file
    // exists, so nothing is in flight when the broker goes away.
    let mut text = String::from(
        "[gpio]\nbackend = \"simulated\"\n[outbox]\nreplay_per_second = 50000\n[[input]]\nname = \"button\"\nline = 1\n",
    );
    for i in 0..5 {
        text.push_str(&format!("[[sensor]]\nname = \"load{i}\"\nkind = \"system\"\nmetric = \"load1\"\ninterval_ms = 1\n"));
    }
    let mut c = config(&text, &dir.path().join("data"));
    c.proc_root = proc_dir.clone();
    let (agent, sim) = start_agent(c, broker.bundle("d1")).await;
    assert!(agent.wait_connected(T).await);

    broker.stop_listener().await;
    let mut link = agent.link_state();
    tokio::time::timeout(T, link.wait_for(|l| !l.is_connected()))
        .await
        .unwrap()
        .unwrap();

    std::fs::write(proc_dir.join("loadavg"), "0.25 0.20 0.10 1/100 999\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while agent.outbox().len() < READINGS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} readings queued",
            agent.outbox().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(proc_dir.join("loadavg")).unwrap();
    // The marker: an input event queued after the readings.
    sim.drive_input("button", true).unwrap();

    broker.restart_listener().await;
    let mut ids = Vec::new();
    let mut marker = None;
    tokio::time::timeout(Duration::from_secs(180), async {
        while let Some((is_event, id)) = rx.recv().await {
            ids.push(id);
            if is_event {
                marker = Some(id);
                return;
            }
        }
    })
    .await
    .expect("the marker event arrived after the outage");
    let marker = marker.unwrap();
    // Readings taken concurrently with the marker may carry a larger id; they are not part
    // of the claim. Everything up to the marker must be there once, in order.
    let got: Vec<i64> = ids.iter().copied().filter(|&id| id <= marker).collect();
    let first = got[0];
    let expected: Vec<i64> = (first..=marker).collect();
    assert!(got.len() as u64 > READINGS, "{} messages", got.len());
    if got != expected {
        let dups: Vec<_> = got.windows(2).filter(|w| w[1] <= w[0]).take(10).collect();
        let gaps: Vec<_> = got
            .windows(2)
            .filter(|w| w[1] > w[0] + 1)
            .take(10)
            .collect();
        panic!(
            "{} received for {} ids {first}..={marker}; out of order/dups {dups:?}; gaps {gaps:?}",
            got.len(),
            expected.len()
        );
    }
    assert_eq!(got, expected, "every reading exactly once, in order");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_oldest_reports_it_and_replays_at_a_limited_rate() {
    let mut broker = TestBroker::start().await;
    broker.stop_listener().await;
    let local = broker.broker.local_client("server:test");
    let mut sub = local.subscribe("devices/d1/#");
    let dir = tempfile::tempdir().unwrap();
    let text = "[gpio]\nbackend = \"simulated\"\n[outbox]\nmax_entries = 40\nreplay_per_second = 100\n[[sensor]]\nname = \"t\"\nkind = \"simulated\"\ninterval_ms = 2\n";
    let (agent, _sim) = start_agent(config(text, dir.path()), broker.bundle("d1")).await;
    let deadline = tokio::time::Instant::now() + T;
    while agent.outbox().dropped() < 20 {
        assert!(tokio::time::Instant::now() < deadline, "nothing dropped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(agent.outbox().len() <= 40);
    broker.restart_listener().await;
    let started = tokio::time::Instant::now();
    let dropped = recv_until(&mut sub, T, |m| {
        &*m.topic == "devices/d1/state/agent_dropped"
    })
    .await;
    assert!(
        json(&dropped)["value"].as_u64().unwrap() >= 20,
        "{}",
        json(&dropped)
    );
    // 40 queued (more keep coming) at 100/s with a burst of 5: the first 40 take over 0.3 s.
    for _ in 0..40 {
        recv_until(&mut sub, T, |m| {
            m.topic.starts_with("devices/d1/telemetry/")
        })
        .await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "replayed too fast: {:?}",
        started.elapsed()
    );
    agent.shutdown().await;
}
