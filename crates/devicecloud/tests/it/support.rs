//! Running the real `devicecloud` binary and third-party clients as subprocesses, waiting on
//! their output lines with deadlines.

use std::{
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

pub const DEADLINE: Duration = Duration::from_secs(30);

/// The binary cargo built for this test run.
pub fn devicecloud_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_devicecloud"))
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

    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
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

/// Sends an MQTT 3.1.1 CONNECT to 127.0.0.1:`port` and returns the CONNACK's return code: a
/// round trip that proves the broker behind the port is alive and serving.
pub async fn connack_code(port: u16, client_id: &str) -> u8 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        DEADLINE,
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .expect("connect within the deadline")
    .expect("the broker accepts the connection");
    let id = client_id.as_bytes();
    // Variable header: protocol name "MQTT", level 4, clean session, keep-alive 60 s.
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&u16::try_from(id.len()).unwrap().to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10, u8::try_from(body.len()).expect("a short client id")];
    packet.extend_from_slice(&body);
    stream.write_all(&packet).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut connack))
        .await
        .expect("CONNACK within the deadline")
        .expect("a CONNACK");
    assert_eq!(connack[..2], [0x20, 2], "not a CONNACK: {connack:?}");
    connack[3]
}

/// The inode of `path`: unchanged means nobody replaced the file by rename.
pub fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .ino()
}

/// A temporary path as an argument.
pub fn s(path: &std::path::Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Runs a devicecloud command on a data directory that `holder_pid` holds and checks it is
/// refused at once: a non-zero exit within `within`, with the message naming the directory and
/// the holder. Returns its output.
pub async fn refused_by_lock(
    args: &[&str],
    data: &std::path::Path,
    holder_pid: u32,
    within: Duration,
) -> Vec<String> {
    let second = Proc::devicecloud(args);
    let (status, out) = tokio::time::timeout(within, second.finish())
        .await
        .expect("the second process exits at once");
    assert!(!status.success(), "{}", out.join("\n"));
    let expected = format!(
        "data directory {} is in use by another devicecloud process (pid {holder_pid}); \
         stop it first or use another --data",
        data.display()
    );
    assert!(
        out.iter().any(|l| l.contains(&expected)),
        "no `{expected}` in:\n{}",
        out.join("\n")
    );
    out
}
