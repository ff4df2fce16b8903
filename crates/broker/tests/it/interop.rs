//! Support for the interoperability tests: our broker in-process on port-0 listeners, and
//! third-party clients (mosquitto_pub/mosquitto_sub, python paho-mqtt) as subprocesses whose
//! output lines are awaited with deadlines — never sleeps.

use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::Duration,
};

use broker::{
    Broker, BrokerConfig,
    auth::Authenticator,
    listener::{BoundListener, ListenUrl, ReloadableTls, Scheme, ServeOptions},
    password_file::AnonymousAuth,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

/// How long any single expected event may take. Generous for a loaded 2-core machine; a
/// passing run never waits for it.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct TestBroker {
    pub urls: Vec<ListenUrl>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestBroker {
    /// Anonymous broker with one plain listener.
    pub async fn plain() -> TestBroker {
        Self::start(&["mqtt://127.0.0.1:0"], Arc::new(AnonymousAuth), None).await
    }

    pub async fn start(
        specs: &[&str],
        auth: Arc<dyn Authenticator>,
        tls: Option<ReloadableTls>,
    ) -> TestBroker {
        let broker = Broker::open(BrokerConfig::default(), auth)
            .await
            .expect("open broker");
        let mut listeners = Vec::new();
        for spec in specs {
            let url: ListenUrl = spec.parse().unwrap();
            let tls = if url.scheme.is_tls() {
                tls.clone()
            } else {
                None
            };
            listeners.push(BoundListener::bind(&url, tls).await.unwrap());
        }
        let urls = listeners.iter().map(BoundListener::local_url).collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(broker::listener::serve_with(
            broker.clone(),
            listeners,
            ServeOptions::default(),
            async {
                let _ = stopped.await;
            },
        ));
        TestBroker {
            urls,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn port(&self, scheme: Scheme) -> u16 {
        self.urls
            .iter()
            .find(|u| u.scheme == scheme)
            .expect("listener of that scheme")
            .addr
            .port()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("broker shutdown timed out")
                .unwrap();
        }
    }
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
        Self::spawn_with(program, args, None)
    }

    pub fn spawn_with(program: &str, args: &[&str], stdin: Option<String>) -> Proc {
        // The mosquitto clients print through stdio, which is block-buffered on a pipe: force
        // line buffering so that lines arrive as they happen.
        let mut command = if program.starts_with("mosquitto") {
            let mut c = Command::new("stdbuf");
            c.args(["-oL", "-eL", program]);
            c
        } else {
            Command::new(program)
        };
        command
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {program}: {err} (is it installed?)"));
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (reader, tag) in [
            (
                Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                "",
            ),
            (Box::new(stderr), "stderr: "),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(reader).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    let _ = tx.send(format!("{tag}{line}"));
                }
            });
        }
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = pipe.write_all(input.as_bytes()).await;
            });
        }
        let name = format!("{program} {}", args.join(" "));
        Proc {
            name,
            child,
            lines,
            transcript: Vec::new(),
        }
    }

    /// Waits for a line satisfying `pred` and returns it.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
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
                    "{}: no {what} within {DEADLINE:?}; output:\n{}",
                    self.name,
                    self.transcript.join("\n")
                ),
            }
        }
    }

    /// mosquitto_sub with `-d`: waits until the subscription is acknowledged.
    pub async fn subscribed(&mut self) {
        self.expect("SUBACK", |l| l.contains("received SUBACK"))
            .await;
    }

    /// The next message printed in our `-F` format (`MSG topic qos retain payload`).
    pub async fn message(&mut self) -> Msg {
        let line = self.expect("a message", |l| l.starts_with("MSG ")).await;
        Msg::parse(&line)
    }

    /// Waits for the process to exit; returns its status and whole output.
    pub async fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let status = match tokio::time::timeout(DEADLINE, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "{}: did not exit within {DEADLINE:?}; output:\n{}",
                    self.name,
                    self.transcript.join("\n")
                );
            }
        };
        // The readers end at EOF once the process is gone.
        while let Ok(Some(line)) = tokio::time::timeout(DEADLINE, self.lines.recv()).await {
            self.transcript.push(line);
        }
        (status, self.transcript)
    }

    /// Exits successfully, or panics with the transcript.
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

    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: String,
}

impl Msg {
    fn parse(line: &str) -> Msg {
        let mut parts = line.splitn(5, ' ');
        parts.next();
        let topic = parts.next().unwrap().to_owned();
        let qos = parts.next().unwrap().parse().unwrap();
        let retain = parts.next().unwrap() == "1";
        let payload = parts.next().unwrap_or("").to_owned();
        Msg {
            topic,
            qos,
            retain,
            payload,
        }
    }
}

/// The `-F` format that [`Proc::message`] parses.
pub const FORMAT: &str = "MSG %t %q %r %p";

/// Arguments for mosquitto_pub/mosquitto_sub against `port` with protocol `version`
/// (`mqttv311` or `mqttv5`), debug output on.
pub fn mosq_args<'a>(port: &'a str, version: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["-h", "127.0.0.1", "-p", port, "-V", version, "-d"];
    args.extend_from_slice(rest);
    args
}

/// mosquitto_sub printing messages in [`FORMAT`].
pub fn sub(port: u16, version: &str, rest: &[&str]) -> Proc {
    let port = port.to_string();
    let mut args = mosq_args(&port, version, &["-F", FORMAT]);
    args.extend_from_slice(rest);
    Proc::spawn("mosquitto_sub", &args)
}

/// Runs mosquitto_pub to completion and asserts it succeeded.
pub async fn publish(port: u16, version: &str, rest: &[&str]) -> Vec<String> {
    let port = port.to_string();
    Proc::spawn("mosquitto_pub", &mosq_args(&port, version, rest))
        .success()
        .await
}

pub fn py_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/py")
        .join(name)
}

/// A throw-away CA with a server certificate for `localhost`/127.0.0.1 and client
/// certificates, all as PEM files in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "interop test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `{name}.pem` and `{name}.key`; returns their paths.
    pub fn issue(&self, name: &str, cn: &str, server: bool) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let sans = if server {
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}
