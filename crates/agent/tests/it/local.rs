//! What works without a broker: config errors, sensors on a fake sysfs, queueing while
//! offline, the status file.

use std::time::Duration;

use agent::{
    config::AgentConfig,
    sensors::Sensor,
    status::{AgentStatus, LinkState},
};

use crate::harness::{Pki, config, start_agent};

#[test]
fn config_file_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "bundle = \"b\"\n\n[[sensor]]\nname = \"t\"\nkind = \"thermometer\"\n",
    )
    .unwrap();
    let err = AgentConfig::load(&path).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}:5: key 'kind'", path.display())),
        "{msg}"
    );
    assert!(msg.contains("ds18b20"), "says what is expected: {msg}");
    // Relative paths are resolved against the config file.
    std::fs::write(&path, "bundle = \"kitchen.bundle\"\ndata_dir = \"state\"\n").unwrap();
    let c = AgentConfig::load(&path).unwrap();
    assert_eq!(c.bundle.unwrap(), dir.path().join("kitchen.bundle"));
    assert_eq!(c.data_dir, dir.path().join("state"));
}

#[tokio::test]
async fn ds18b20_from_a_fake_sysfs_tree() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("bus/w1/devices/28-00000a1b2c3d");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::create_dir_all(dir.path().join("bus/w1/devices/w1_bus_master1")).unwrap();
    std::fs::write(
        dev.join("w1_slave"),
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
    )
    .unwrap();
    let text = format!(
        "sysfs_root = \"{}\"\n[[sensor]]\nname = \"outside\"\nkind = \"ds18b20\"\n[[sensor]]\nname = \"named\"\nkind = \"ds18b20\"\ndevice = \"28-00000a1b2c3d\"\n[[sensor]]\nname = \"absent\"\nkind = \"ds18b20\"\ndevice = \"28-ffff\"\n",
        dir.path().display()
    );
    let c = AgentConfig::parse(&text, "t").unwrap();
    let mut first = Sensor::new(&c.sensors[0], &c);
    let mut named = Sensor::new(&c.sensors[1], &c);
    let mut absent = Sensor::new(&c.sensors[2], &c);
    assert_eq!(
        first.read().await.unwrap(),
        23.125,
        "the first 28-* device is found"
    );
    assert_eq!(named.read().await.unwrap(), 23.125);
    assert!(
        absent
            .read()
            .await
            .unwrap_err()
            .to_string()
            .contains("28-ffff")
    );
    std::fs::write(
        dev.join("w1_slave"),
        "72 01 4b 46 7f ff 0e 10 57 : crc=00 NO\n72 01 t=99999\n",
    )
    .unwrap();
    assert!(named.read().await.unwrap_err().to_string().contains("CRC"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_agent_queues_and_reports_status() {
    let pki = Pki::new();
    let (cert_pem, key_pem) = pki.issue("d1");
    // Nothing listens on this port: bind one and drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bundle = proto::bundle::Bundle {
        device_id: "d1".into(),
        broker_urls: vec![format!("mqtts://127.0.0.1:{port}")],
        api_url: None,
        ca_pem: pki.ca_pem.clone(),
        credentials: proto::bundle::Credentials::Certificate { cert_pem, key_pem },
    };
    let dir = tempfile::tempdir().unwrap();
    let text = "[gpio]\nbackend = \"simulated\"\n[[sensor]]\nname = \"temperature\"\nkind = \"simulated\"\ninterval_ms = 5\n[[service]]\nname = \"idle\"\ncommand = \"sleep\"\nargs = [\"1000\"]\nstop_timeout_ms = 2000\n";
    let (agent, _sim) = start_agent(config(text, dir.path()), bundle).await;
    let mut link = agent.link_state();
    tokio::time::timeout(
        Duration::from_secs(10),
        link.wait_for(|l| matches!(l, LinkState::Disconnected { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while agent.outbox().len() < 5 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The status file tells `agent status` about the link and the service.
    let status = loop {
        let s = AgentStatus::read(dir.path()).unwrap();
        if matches!(s.link, LinkState::Disconnected { .. })
            && s.services.first().is_some_and(|s| s.state == "running")
        {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let text = status.render();
    assert!(
        text.contains("disconnected") && text.contains("idle") && text.contains("running"),
        "{text}"
    );
    let LinkState::Disconnected { error, .. } = &status.link else {
        unreachable!()
    };
    assert!(error.contains(&port.to_string()), "{error}");
    // The services get the device's credentials as files.
    let key = dir.path().join("credentials/device.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    agent.shutdown().await;
    let status = AgentStatus::read(dir.path()).unwrap();
    assert_eq!(status.link, LinkState::Stopped);
}
