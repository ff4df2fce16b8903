//! `devicecloud broker` as a process: persistence across kill -9, signals, safe defaults.

use crate::support::{Proc, mosq, spawn_mosq};

/// A QoS 1 message queued for an offline persistent session survives the broker being
/// killed with SIGKILL, and so does the subscription: after a restart the client reconnects
/// with the same id and gets both the message queued before the crash and one published
/// after the restart, which it never re-subscribed for.
#[tokio::test]
async fn persistent_sessions_and_queued_messages_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let start = || {
        Proc::devicecloud(&[
            "broker",
            "--listen",
            "mqtt://127.0.0.1:0",
            "--data",
            data_dir,
        ])
    };

    let mut broker = start();
    let port = broker.listening_port("mqtt").await;
    // v3.1.1: clean session off (-c); v5: clean start off and a session expiry (-x).
    let clients = [
        ("mqttv311", "e2e-v311", vec!["-c"]),
        ("mqttv5", "e2e-v5", vec!["-c", "-x", "3600"]),
    ];
    for (version, id, session) in &clients {
        let topic = format!("e2e/{id}");
        let mut rest = vec!["-i", id, "-q", "1", "-t", topic.as_str(), "-E"];
        rest.extend(session.iter().copied());
        // -E: exit once subscribed, leaving the session (and its subscription) behind.
        let out = spawn_mosq("mosquitto_sub", &mosq(port, version, &rest))
            .success()
            .await;
        assert!(
            out.iter().any(|l| l.contains("received SUBACK")),
            "{}",
            out.join("\n")
        );
        spawn_mosq(
            "mosquitto_pub",
            &mosq(
                port,
                version,
                &["-t", &topic, "-q", "1", "-m", "queued before the crash"],
            ),
        )
        .success()
        .await;
    }
    broker.signal("KILL");
    let (status, _) = broker.finish().await;
    assert!(!status.success());

    let mut broker = start();
    let port = broker.listening_port("mqtt").await;
    for (version, id, _) in &clients {
        let topic = format!("e2e/{id}");
        spawn_mosq(
            "mosquitto_pub",
            &mosq(
                port,
                version,
                &["-t", &topic, "-q", "1", "-m", "published after the restart"],
            ),
        )
        .success()
        .await;
    }
    for (version, id, session) in &clients {
        let mut rest = vec![
            "-i",
            id,
            "-q",
            "1",
            "-t",
            "e2e/unused",
            "-C",
            "2",
            "-F",
            "MSG %t %p",
        ];
        rest.extend(session.iter().copied());
        let out = spawn_mosq("mosquitto_sub", &mosq(port, version, &rest))
            .success()
            .await;
        let got: Vec<&str> = out.iter().filter_map(|l| l.strip_prefix("MSG ")).collect();
        let topic = format!("e2e/{id}");
        assert_eq!(
            got,
            [
                format!("{topic} queued before the crash"),
                format!("{topic} published after the restart")
            ],
            "{version}:\n{}",
            out.join("\n")
        );
    }
    broker.signal("TERM");
    broker.success().await;
}

#[tokio::test]
async fn sigterm_and_sigint_stop_gracefully_with_exit_code_0() {
    for signal in ["TERM", "INT"] {
        let mut broker = Proc::devicecloud(&[
            "broker",
            "--listen",
            "mqtt://127.0.0.1:0",
            "--listen",
            "ws://127.0.0.1:0",
        ]);
        let port = broker.listening_port("mqtt").await;
        broker.listening_port("ws").await;
        // A connected client is told the server is shutting down (v5 0x8B).
        let mut sub = spawn_mosq("mosquitto_sub", &mosq(port, "mqttv5", &["-t", "e2e/x"]));
        sub.expect("SUBACK", |l| l.contains("received SUBACK"))
            .await;
        // SIGHUP with nothing to reload must not kill it (SIGHUP's default action).
        broker.signal("HUP");
        broker
            .expect("SIGHUP handled", |l| l.contains("SIGHUP received"))
            .await;
        broker.signal(signal);
        let out = broker.success().await;
        assert!(
            out.iter().any(|l| l.contains("broker stopped")),
            "{}",
            out.join("\n")
        );
        let (_, sub_out) = sub.finish().await;
        // 139 = 0x8B Server shutting down.
        assert!(
            sub_out
                .iter()
                .any(|l| l.contains("Received DISCONNECT (139)")),
            "{}",
            sub_out.join("\n")
        );
    }
}

#[tokio::test]
async fn exposed_plain_listener_is_refused_without_the_explicit_flag() {
    let (status, out) = Proc::devicecloud(&["broker", "--listen", "mqtt://0.0.0.0:0"])
        .finish()
        .await;
    let text = out.join("\n");
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("--allow-insecure-listeners") && text.contains("--password-file"),
        "{text}"
    );
}

/// `devicecloud broker passwd` writes the file; SIGHUP makes a running broker pick up a user
/// added afterwards, and refuses wrong passwords with the right reason.
#[tokio::test]
async fn passwd_command_and_password_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let file_s = file.to_str().unwrap();
    passwd(file_s, "alice", "first secret").await;

    let mut broker = Proc::devicecloud(&[
        "broker",
        "--listen",
        "mqtt://127.0.0.1:0",
        "--password-file",
        file_s,
    ]);
    let port = broker.listening_port("mqtt").await;
    let hello = |user: &'static str, password: &'static str| {
        spawn_mosq(
            "mosquitto_pub",
            &mosq(
                port,
                "mqttv5",
                &["-u", user, "-P", password, "-t", "e2e/pw", "-m", "hi"],
            ),
        )
    };
    hello("alice", "first secret").success().await;
    let (status, out) = hello("bob", "second").finish().await;
    assert!(
        !status.success()
            && out
                .join("\n")
                .to_lowercase()
                .contains("bad user name or password"),
        "{}",
        out.join("\n")
    );

    passwd(file_s, "bob", "second").await;
    broker.signal("HUP");
    broker
        .expect("password reload", |l| {
            l.contains("reloaded the password file: 2 user(s)")
        })
        .await;
    hello("bob", "second").success().await;
    broker.signal("TERM");
    broker.success().await;

    // Empty passwords are refused.
    let (status, out) = passwd_with_stdin(file_s, "carol", "").await;
    assert!(!status.success() && out.contains("empty"), "{out}");
}

async fn passwd(file: &str, user: &str, password: &str) {
    let (status, out) = passwd_with_stdin(file, user, &format!("{password}\n")).await;
    assert!(status.success(), "{out}");
}

async fn passwd_with_stdin(
    file: &str,
    user: &str,
    input: &str,
) -> (std::process::ExitStatus, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(crate::support::devicecloud_bin())
        .args(["broker", "passwd", file, user])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(crate::support::DEADLINE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
