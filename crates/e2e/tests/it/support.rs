//! Running the real `devicecloud` binary and third-party clients as subprocesses, waiting on
//! their output lines with deadlines.
//!
//! Finding the binary: `CARGO_BIN_EXE_devicecloud` only exists for tests of the package that
//! owns the binary, so this crate locates it itself:
//! 1. `DEVICECLOUD_BIN`, if set, is used as is;
//! 2. otherwise `cargo build -p devicecloud --bin devicecloud` is run once per test process
//!    (a no-op when it is up to date; `cargo nextest` releases the build lock while tests run,
//!    so this works there; nextest runs each test in its own process, so sibling tests may
//!    briefly wait for each other's build). Under plain `cargo test`, which holds the lock,
//!    the nested build would wait forever: outside nextest, when cargo reports it is blocked
//!    on the lock, the build is abandoned and the binary already in the target directory is
//!    used (`cargo test --workspace` has just built it).

use std::{
    io::{BufRead, BufReader as StdBufReader},
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::OnceLock,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn devicecloud_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("DEVICECLOUD_BIN") {
            return PathBuf::from(bin);
        }
        // target/<profile>/deps/it-<hash> -> target/<profile>/devicecloud
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target/<profile>/deps layout");
        let bin = profile_dir.join(format!("devicecloud{}", std::env::consts::EXE_SUFFIX));
        build_devicecloud();
        assert!(
            bin.exists(),
            "{} does not exist: run `cargo build -p devicecloud` first, or set DEVICECLOUD_BIN",
            bin.display()
        );
        bin
    })
    .clone()
}

fn build_devicecloud() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut command = std::process::Command::new(cargo);
    // The variables cargo/nextest set for *this test* must not leak into the nested build:
    // a crate reading one of them would get a different fingerprint and be rebuilt.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let per_test = [
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_MANIFEST_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || name == "CARGO_TARGET_TMPDIR"
            || name.starts_with("NEXTEST")
            || name.starts_with("__NEXTEST");
        if per_test {
            command.env_remove(name.as_ref());
        }
    }
    let mut child = command
        .args(["build", "-p", "devicecloud", "--bin", "devicecloud"])
        .current_dir(workspace)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cargo build");
    let stderr = StdBufReader::new(child.stderr.take().expect("piped"));
    for line in stderr.lines().map_while(Result::ok) {
        if line.contains("Blocking waiting for file lock")
            && std::env::var_os("NEXTEST_RUN_ID").is_none()
            && std::env::var_os("NEXTEST").is_none()
        {
            // Our parent cargo holds the lock (plain `cargo test`); see the module docs.
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        if line.trim_start().starts_with("error") {
            eprintln!("cargo build -p devicecloud: {line}");
        }
    }
    let status = child.wait().expect("wait for cargo build");
    assert!(status.success(), "cargo build -p devicecloud failed");
}

/// A subprocess whose stdout and stderr lines are collected as they come.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    pub transcript: Vec<String>,
}

impl Proc {
    pub fn spawn(program: &str, args: &[&str]) -> Proc {
        let mut command = if program.starts_with("mosquitto") {
            // stdio is block-buffered on a pipe; line-buffer so lines arrive as they happen.
            let mut c = Command::new("stdbuf");
            c.args(["-oL", "-eL", program]);
            c
        } else {
            Command::new(program)
        };
        command
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = tx.send(line);
            }
        });
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        Proc {
            name: format!("{program} {}", args.join(" ")),
            child,
            lines,
            transcript: Vec::new(),
        }
    }

    pub fn devicecloud(args: &[&str]) -> Proc {
        let bin = devicecloud_bin();
        Self::spawn(bin.to_str().unwrap(), args)
    }

    pub async fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.expect_within(what, DEADLINE, pred).await
    }

    /// Like `expect`, with a deadline of `within` from now (for "happens within N seconds").
    pub async fn expect_within(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.transcript.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!(
                    "{}: exited before {what}; output:\n{}",
                    self.name,
                    self.transcript.join("\n")
                ),
                Err(_) => panic!(
                    "{}: no {what} within {within:?}; output:\n{}",
                    self.name,
                    self.transcript.join("\n")
                ),
            }
        }
    }

    /// For `devicecloud broker`: waits for "listening on <scheme>://127.0.0.1:PORT" and
    /// returns the port.
    pub async fn listening_port(&mut self, scheme: &str) -> u16 {
        let marker = format!("listening on {scheme}://");
        let line = self.expect(&marker, |l| l.contains(&marker)).await;
        let rest = &line[line.find(&marker).unwrap() + marker.len()..];
        let addr = rest.split(['/', ' ']).next().unwrap();
        addr.rsplit_once(':').unwrap().1.parse().unwrap()
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{signal} {pid}");
    }

    pub async fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let status = match tokio::time::timeout(DEADLINE, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "{}: did not exit within {DEADLINE:?}; output:\n{}",
                self.name,
                self.transcript.join("\n")
            ),
        };
        while let Ok(Some(line)) = tokio::time::timeout(DEADLINE, self.lines.recv()).await {
            self.transcript.push(line);
        }
        (status, self.transcript)
    }

    pub async fn success(self) -> Vec<String> {
        let name = self.name.clone();
        let (status, out) = self.finish().await;
        assert!(
            status.success(),
            "{name}: {status}; output:\n{}",
            out.join("\n")
        );
        out
    }
}

/// mosquitto client arguments for 127.0.0.1:`port`, debug output on.
pub fn mosq(port: u16, version: &str, rest: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-V",
        version,
        "-d",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(rest.iter().map(|s| s.to_string()));
    args
}

pub fn spawn_mosq(program: &str, args: &[String]) -> Proc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(program, &args)
}
