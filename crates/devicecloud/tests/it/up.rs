//! `devicecloud up` as scripts use it: the ready line, the ready file, one `up` per directory.

use std::path::Path;

use crate::support::{DEADLINE, Proc, refused_by_lock, s};

const READY_PREFIX: &str = "DEVICECLOUD_READY ";

#[tokio::test]
async fn up_announces_ready_once_with_a_line_and_a_file_and_refuses_a_second_up() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let args = [
        "up",
        "--data",
        s(&data),
        "--listen",
        "https://127.0.0.1:0",
        "--listen",
        "mqtts://127.0.0.1:0",
        "--listen",
        "mqtt://127.0.0.1:0",
    ];
    let mut up = Proc::devicecloud(&args);
    let line = up
        .expect("the ready line", |l| l.starts_with(READY_PREFIX))
        .await;
    let ready: serde_json::Value =
        serde_json::from_str(line.strip_prefix(READY_PREFIX).unwrap()).expect("JSON");

    // The file says the same as the line.
    let file = std::fs::read_to_string(data.join("ready.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&file).unwrap(),
        ready
    );

    let https = ready["https"].as_str().unwrap();
    let port = https.strip_prefix("https://127.0.0.1:").expect(https);
    assert_eq!(ready["url"], format!("https://localhost:{port}/"));
    assert!(
        ready["mqtts"]
            .as_str()
            .unwrap()
            .starts_with("mqtts://127.0.0.1:")
    );
    assert!(
        ready["mqtt"]
            .as_str()
            .unwrap()
            .starts_with("mqtt://127.0.0.1:")
    );
    assert_eq!(ready["user"], "admin");
    assert_eq!(
        ready["demo_device"], "demo",
        "the demo device started: {ready}"
    );
    assert_eq!(ready["pid"], up.pid());
    let password_file = ready["password_file"].as_str().unwrap();
    let password = std::fs::read_to_string(password_file).unwrap();
    assert!(password.trim().len() >= 16, "a generated password");
    assert!(
        !line.contains(password.trim()),
        "the ready line carries no secret"
    );
    assert_eq!(ready["ca_sha256"].as_str().unwrap().len(), 64);
    assert!(Path::new(ready["ca_cert"].as_str().unwrap()).is_file());
    // Printed once, after the welcome text (which names the same password for humans).
    let stdout: Vec<&String> = up
        .transcript
        .iter()
        .filter(|l| !l.starts_with("stderr: "))
        .collect();
    assert_eq!(
        stdout
            .iter()
            .filter(|l| l.starts_with(READY_PREFIX))
            .count(),
        1
    );
    assert!(
        stdout.iter().any(|l| l.contains("devicecloud is up.")),
        "{stdout:?}"
    );

    // A second `up` on the same data directory is refused, naming the first.
    refused_by_lock(&args, &data, up.pid(), DEADLINE).await;
    assert!(
        data.join("ready.json").is_file(),
        "the refused `up` left the first one's ready file alone"
    );

    up.signal("TERM");
    up.success().await;
    assert!(
        !data.join("ready.json").exists(),
        "the ready file goes away with the process"
    );
}
