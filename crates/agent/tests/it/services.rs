//! Device services: restart with backoff, stop with the whole process group.

use std::time::{Duration, Instant};

use agent::{
    config::AgentConfig,
    supervisor::{Supervisor, group_alive, proc_stat},
};

fn services(text: &str) -> Vec<agent::config::ServiceConfig> {
    AgentConfig::parse(text, "test").unwrap().services
}

async fn wait_until(
    timeout: Duration,
    mut rx: tokio::sync::watch::Receiver<u64>,
    mut cond: impl FnMut() -> bool,
) -> bool {
    tokio::time::timeout(timeout, async {
        loop {
            if cond() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await
    .is_ok()
        && cond()
}

#[tokio::test]
async fn crashing_service_is_restarted_with_backoff_and_gets_the_env() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("runs");
    let script = format!(
        "echo \"run $DEVICECLOUD_DEVICE_ID $EXTRA\" >> {}; echo oops >&2; exit 3",
        marker.display()
    );
    let config = services(&format!(
        "[[service]]\nname = \"crashy\"\ncommand = \"sh\"\nargs = [\"-c\", '{script}']\nenv = {{ EXTRA = \"x\" }}\nrestart = \"on-failure\"\nbackoff_ms = 100\nbackoff_max_ms = 400\n"
    ));
    let started = Instant::now();
    let mut sup = Supervisor::start(
        &config,
        vec![("DEVICECLOUD_DEVICE_ID".into(), "d1".into())],
        dir.path(),
    );
    let changes = sup.changes();
    assert!(
        wait_until(Duration::from_secs(20), changes, || sup
            .status("crashy")
            .is_some_and(|s| s.restarts >= 3))
        .await,
        "{:?}",
        sup.status("crashy")
    );
    // Delays 100 + 200 + 400 ms at least (jitter-free doubling).
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    let s = sup.status("crashy").unwrap();
    assert_eq!(s.last_exit.as_deref(), Some("exit code 3"));
    let runs = std::fs::read_to_string(&marker).unwrap();
    assert!(
        runs.lines().count() >= 3 && runs.lines().all(|l| l == "run d1 x"),
        "{runs}"
    );
    let log = std::fs::read_to_string(dir.path().join("crashy.log")).unwrap();
    assert!(log.contains("oops") && log.contains("exit code 3"), "{log}");
    sup.stop_all().await;
    assert_eq!(sup.status("crashy").unwrap().state, "stopped");
}

#[tokio::test]
async fn stopping_a_service_stops_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let config = services(
        "[[service]]\nname = \"tree\"\ncommand = \"sh\"\nargs = [\"-c\", \"sleep 1000 & sleep 1000 & wait\"]\nstop_timeout_ms = 3000\n",
    );
    let mut sup = Supervisor::start(&config, Vec::new(), dir.path());
    let changes = sup.changes();
    assert!(
        wait_until(Duration::from_secs(10), changes, || sup
            .status("tree")
            .is_some_and(|s| s.pid.is_some()))
        .await
    );
    let pgid = sup.status("tree").unwrap().pid.unwrap();
    // The shell and its two sleeps share the service's own process group.
    let members = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| {
                proc_stat(pid).is_some_and(|(state, group)| group == pgid && state != 'Z')
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pids = members();
    while pids.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the sleeps did not start: {pids:?}"
        );
        tokio::task::yield_now().await;
        pids = members();
    }
    assert_ne!(pgid, std::process::id(), "not our group");
    let t = Instant::now();
    assert!(sup.stop("tree").await);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "SIGTERM was enough: {:?}",
        t.elapsed()
    );
    assert!(!group_alive(pgid), "the group is empty");
    for pid in pids {
        assert!(
            proc_stat(pid).is_none_or(|(state, _)| state == 'Z'),
            "pid {pid} is gone"
        );
    }
    let s = sup.status("tree").unwrap();
    assert_eq!(s.state, "stopped");
    assert!(s.last_exit.unwrap().contains("SIGTERM"));
}

#[tokio::test]
async fn stubborn_service_is_killed_after_the_stop_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = services(
        "[[service]]\nname = \"stubborn\"\ncommand = \"sh\"\nargs = [\"-c\", \"trap '' TERM; echo ready; while :; do sleep 1; done\"]\nstop_timeout_ms = 300\nrestart = \"never\"\n",
    );
    let mut sup = Supervisor::start(&config, Vec::new(), dir.path());
    let log = dir.path().join("stubborn.log");
    let changes = sup.changes();
    assert!(
        wait_until(Duration::from_secs(10), changes, || sup
            .status("stubborn")
            .is_some_and(|s| s.pid.is_some()))
        .await
    );
    let pgid = sup.status("stubborn").unwrap().pid.unwrap();
    // Wait for the trap to be installed (the script says so).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    sup.stop("stubborn").await;
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert!(!group_alive(pgid));
    assert!(
        sup.status("stubborn")
            .unwrap()
            .last_exit
            .unwrap()
            .contains("SIGKILL")
    );
}
