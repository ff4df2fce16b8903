//! One process per data directory (issue 8), and the open-files limit raised at start.

use std::{path::Path, time::Duration};

use crate::support::{Proc, connack_code, inode, refused_by_lock, s};

/// "Refused at once": the second process must not get as far as binding ports or opening files.
const REFUSED_WITHIN: Duration = Duration::from_secs(10);

/// The second process is refused, and the first one's files are as they were: the journal not
/// replaced (today's bug was a compaction by rename), the lock file still naming the first.
async fn assert_second_is_refused(args: &[&str], data: &Path, first: &Proc, journal: &Path) {
    let before = inode(journal);
    refused_by_lock(args, data, first.pid(), REFUSED_WITHIN).await;
    assert_eq!(inode(journal), before, "the journal was replaced");
    assert_eq!(
        std::fs::read_to_string(data.join("lock")).unwrap().trim(),
        first.pid().to_string(),
        "the lock file still names the first process"
    );
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
    assert_second_is_refused(&args, &data, &first, &data.join("broker.journal")).await;
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
    assert_second_is_refused(&args, &data, &first, &journal).await;
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
