//! One process per data directory (issue 8), and the open-files limit raised at start.

use std::{path::Path, time::Duration};

use crate::support::{Proc, connack_code, inode};

/// "Refused at once": the second process must not get as far as binding ports or opening files.
const REFUSED_WITHIN: Duration = Duration::from_secs(10);

fn s(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Runs a second devicecloud command on a data directory in use and returns its output, after
/// checking it exits non-zero in time and names the holder's pid.
async fn refused(args: &[&str], holder_pid: u32) -> Vec<String> {
    let second = Proc::devicecloud(args);
    let (status, out) = tokio::time::timeout(REFUSED_WITHIN, second.finish())
        .await
        .expect("the second process exits at once");
    assert!(!status.success(), "{}", out.join("\n"));
    let expected = format!(
        "is in use by another devicecloud process (pid {holder_pid}); stop it first or use another --data"
    );
    assert!(
        out.iter().any(|l| l.contains(&expected)),
        "no `{expected}` in:\n{}",
        out.join("\n")
    );
    out
}

#[tokio::test]
async fn second_broker_on_the_same_data_directory_is_refused_and_the_first_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let args = [
        "broker",
        "--data",
        s(&data),
        "--listen",
        "mqtt://127.0.0.1:0",
    ];
    let mut first = Proc::devicecloud(&args);
    let port = first.listening_port("mqtt").await;
    let journal = data.join("broker.journal");
    let before = inode(&journal);

    refused(&args, first.pid()).await;

    assert_eq!(
        inode(&journal),
        before,
        "the journal was replaced (compacted by rename)"
    );
    assert_eq!(
        connack_code(port, "still-there").await,
        0,
        "the first broker still serves"
    );
    first.signal("TERM");
    first.success().await;
}

#[tokio::test]
async fn second_server_on_the_same_data_directory_is_refused_and_the_first_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let args = [
        "server",
        "--data",
        s(&data),
        "--listen",
        "mqtt://127.0.0.1:0",
        "--listen",
        "https://127.0.0.1:0",
    ];
    let mut first = Proc::devicecloud(&args);
    let line = first
        .expect("the mqtt listener line", |l| {
            !l.starts_with("stderr: ") && l.contains("listening on mqtt://127.0.0.1:")
        })
        .await;
    let port: u16 = line.rsplit_once(':').unwrap().1.trim().parse().unwrap();
    first
        .expect("the CA certificate line", |l| {
            l.contains("CA certificate: ")
        })
        .await;
    let journal = data.join("broker").join("broker.journal");
    let before = inode(&journal);

    refused(&args, first.pid()).await;

    assert_eq!(
        inode(&journal),
        before,
        "the journal was replaced (compacted by rename)"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("lock")).unwrap().trim(),
        first.pid().to_string(),
        "the lock file still names the first server"
    );
    // Anonymous clients are refused, but with a CONNACK: the broker answers.
    let code = connack_code(port, "still-there").await;
    assert_ne!(code, 0, "anonymous clients are not let in by default");
    first.signal("TERM");
    first.success().await;
}

#[tokio::test]
async fn soft_open_files_limit_is_raised_to_the_hard_limit_at_start() {
    // Start the broker with a low soft limit, as a login shell's default of 1024 would.
    let bin = crate::support::devicecloud_bin();
    let mut broker = Proc::spawn(
        "sh",
        &[
            "-c",
            "ulimit -S -n 256 && exec \"$0\" \"$@\"",
            s(&bin),
            "broker",
            "--listen",
            "mqtt://127.0.0.1:0",
        ],
    );
    broker.listening_port("mqtt").await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", broker.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a `Max open files` line");
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers.len(), 2, "{open_files}");
    assert_eq!(
        numbers[0], numbers[1],
        "soft limit not raised: {open_files}"
    );
    assert_ne!(numbers[0], "256", "{open_files}");
    assert!(
        broker
            .transcript
            .iter()
            .any(|l| l.contains(&format!("open-files limit: {}", numbers[0]))),
        "the limit is logged:\n{}",
        broker.transcript.join("\n")
    );
    broker.signal("TERM");
    broker.success().await;
}
