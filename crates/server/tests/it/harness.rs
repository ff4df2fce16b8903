//! Shared test scaffolding: a server on 127.0.0.1 port 0 with a temporary data directory,
//! devices registered through the store and pki APIs, and the third-party clients
//! (`mosquitto_pub`/`mosquitto_sub`, paho) run as child processes.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use server::{RunningServer, Server, ServerOptions, config::ServerConfig};
use store::{DeviceCredential, Grants, Role};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A config whose certificate names do not depend on the machine.
pub fn test_config() -> ServerConfig {
    let mut config = ServerConfig {
        hostnames: vec!["localhost".into()],
        ip_addresses: vec!["127.0.0.1".parse().unwrap()],
        ..ServerConfig::default()
    };
    // Tests make many deliberate failures from 127.0.0.1; the backoff test sets its own.
    config.auth.failures_before_backoff = 1000;
    config
}

pub fn test_options(dir: &Path) -> ServerOptions {
    ServerOptions::new(test_config(), dir).listen([
        "mqtts://127.0.0.1:0",
        "mqtt://127.0.0.1:0",
        "https://127.0.0.1:0",
    ])
}

pub async fn start(dir: &Path) -> RunningServer {
    install_crypto();
    Server::start(test_options(dir))
        .await
        .expect("server starts")
}

/// PEM files for one device, as `devicecloud device add --pem DIR` writes them.
#[derive(Debug, Clone)]
pub struct DevicePems {
    pub id: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub fingerprint: String,
}

/// Issues a client certificate for `id` from the server's CA and registers the device.
pub async fn add_cert_device(server: &RunningServer, dir: &Path, id: &str) -> DevicePems {
    let pems = issue_cert(&server.ctx.ca, dir, id);
    let info = pki::cert_info(&std::fs::read_to_string(&pems.cert).unwrap()).unwrap();
    let credential = DeviceCredential::Certificate {
        serial_hex: info.serial_hex,
        fingerprint_sha256: info.fingerprint_sha256,
        not_after_ms: info.not_after_unix * 1000,
    };
    server
        .ctx
        .store
        .devices()
        .add(id, &credential, &Grants::default())
        .await
        .unwrap();
    pems
}

/// Issues (without registering) a certificate for `id` from `ca` into `dir/pems-{id}/`.
pub fn issue_cert(ca: &pki::Ca, dir: &Path, id: &str) -> DevicePems {
    let issued = ca
        .issue_device_cert(id, Duration::from_secs(30 * 86400))
        .unwrap();
    let out = dir.join(format!("pems-{id}-{}", &issued.info.serial_hex[..8]));
    std::fs::create_dir_all(&out).unwrap();
    let pems = DevicePems {
        id: id.to_owned(),
        ca: out.join("ca.crt"),
        cert: out.join(format!("{id}.crt")),
        key: out.join(format!("{id}.key")),
        fingerprint: issued.info.fingerprint_sha256.clone(),
    };
    std::fs::write(&pems.ca, ca.cert_pem()).unwrap();
    std::fs::write(&pems.cert, &issued.cert_pem).unwrap();
    std::fs::write(&pems.key, &issued.key_pem).unwrap();
    pems
}

/// Registers a token device; returns its token.
pub async fn add_token_device(server: &RunningServer, id: &str) -> String {
    let token = store::secret::generate_device_token();
    let credential = DeviceCredential::Token {
        token_hash: store::secret::hash_token(&token),
    };
    server
        .ctx
        .store
        .devices()
        .add(id, &credential, &Grants::default())
        .await
        .unwrap();
    token
}

pub async fn add_user(server: &RunningServer, name: &str, role: Role, password: &str) {
    let hash = store::secret::hash_password(password).unwrap();
    server
        .ctx
        .store
        .users()
        .add(name, role, &hash)
        .await
        .unwrap();
}

pub fn ca_file(server: &RunningServer) -> PathBuf {
    server.ctx.ca.cert_path()
}

/// `-h localhost -p PORT --cafile CA` (+ `--cert/--key`): the TLS arguments of mosquitto clients.
pub fn mosq_tls(server: &RunningServer, device: Option<&DevicePems>) -> Vec<String> {
    let port = server.mqtts_addr().unwrap().port();
    let mut args: Vec<String> = vec![
        "-h".into(),
        "localhost".into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        path(&ca_file(server)),
    ];
    if let Some(device) = device {
        args.extend([
            "--cert".into(),
            path(&device.cert),
            "--key".into(),
            path(&device.key),
        ]);
    }
    args
}

pub fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Output of a finished client process.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub text: String,
}

/// Runs `program args` to completion (with a deadline) and returns exit code and stdout+stderr.
pub async fn run(program: &str, args: &[String]) -> Output {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (install mosquitto-clients / python3-paho-mqtt): {e}")
        });
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {WAIT:?}"))
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Output {
        code: out.status.code(),
        text,
    }
}

pub async fn mosquitto_pub(args: Vec<String>) -> Output {
    run("mosquitto_pub", &args).await
}

/// A running `mosquitto_sub -d -v` whose output is read line by line.
pub struct Sub {
    pub child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pub seen: Vec<String>,
}

impl Sub {
    /// Starts it and waits for its SUBACK (or for it to exit, e.g. when refused).
    pub async fn start(args: Vec<String>) -> Sub {
        // stdbuf: mosquitto_sub's stdio would otherwise block-buffer its output into the pipe.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d", "-v"])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub is installed");
        let stdout = child.stdout.take().unwrap();
        let mut sub = Sub {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        };
        sub.wait_for(|l| {
            l.contains("SUBACK") || l.contains("Connection error") || l.contains("rror")
        })
        .await;
        sub
    }

    /// Reads lines until one satisfies `pred`; returns it (None when the process ended).
    pub async fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| {
                    panic!("no matching line within {WAIT:?}; seen: {:#?}", self.seen)
                })
                .unwrap();
            let line = line?;
            self.seen.push(line.clone());
            if pred(&line) {
                return Some(line);
            }
        }
    }

    /// Waits for a received message line `TOPIC PAYLOAD`.
    pub async fn expect_message(&mut self, topic: &str, payload: &str) {
        let want = format!("{topic} {payload}");
        let got = self.wait_for(|l| l == want).await;
        assert!(
            got.is_some(),
            "mosquitto_sub ended before {want:?}; seen: {:#?}",
            self.seen
        );
    }

    /// What the process wrote to stderr (read after it exited).
    pub async fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = tokio::time::timeout(WAIT, err.read_to_string(&mut text)).await;
        }
        text
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|r| r.unwrap())
    }
}

/// Runs a small paho-mqtt (v5) script: connect, optionally publish with QoS 1, print
/// `CONNACK <reason code>` and `PUBACK <reason code>`.
pub async fn paho(
    port: u16,
    ca: &Path,
    cert: Option<(&Path, &Path)>,
    username: Option<&str>,
    password: Option<&str>,
    client_id: &str,
    publish: Option<(&str, &str)>,
) -> Output {
    const SCRIPT: &str = r#"
import json, sys, threading
import paho.mqtt.client as mqtt
a = json.loads(sys.argv[1])
done = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=a["client_id"], protocol=mqtt.MQTTv5)
c.tls_set(ca_certs=a["ca"], certfile=a.get("cert"), keyfile=a.get("key"))
if a.get("username") is not None:
    c.username_pw_set(a["username"], a.get("password"))
def on_connect(client, userdata, flags, rc, props):
    print("CONNACK", rc.value, flush=True)
    if rc.value != 0 or a.get("topic") is None:
        done.set()
        return
    client.publish(a["topic"], a["payload"], qos=1)
def on_publish(client, userdata, mid, rc, props):
    print("PUBACK", rc.value, flush=True)
    done.set()
def on_disconnect(client, userdata, flags, rc, props):
    done.set()
c.on_connect = on_connect
c.on_publish = on_publish
c.on_disconnect = on_disconnect
try:
    c.connect("localhost", a["port"])
except Exception as e:
    print("ERROR", type(e).__name__, e, flush=True)
    sys.exit(3)
c.loop_start()
done.wait(8)
c.disconnect()
c.loop_stop()
"#;
    let mut args = serde_json::json!({ "port": port, "ca": path(ca), "client_id": client_id });
    if let Some((cert, key)) = cert {
        args["cert"] = path(cert).into();
        args["key"] = path(key).into();
    }
    if let Some(u) = username {
        args["username"] = u.into();
    }
    if let Some(p) = password {
        args["password"] = p.into();
    }
    if let Some((topic, payload)) = publish {
        args["topic"] = topic.into();
        args["payload"] = payload.into();
    }
    run("python3", &["-c".into(), SCRIPT.into(), args.to_string()]).await
}

/// A rustls client configuration trusting `ca`, optionally with a client certificate.
pub fn tls_client_config(ca: &Path, client: Option<&DevicePems>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some(d) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(&d.cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(&d.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// An MQTT 5 CONNECT with clean start, keep alive 60 s.
pub fn connect_v5(client_id: &str, username: Option<&str>, password: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5]);
    let mut flags = 0x02u8;
    if username.is_some() {
        flags |= 0x80;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&[0, 60, 0]);
    let mut field = |bytes: &[u8]| {
        body.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        body.extend_from_slice(bytes);
    };
    field(client_id.as_bytes());
    if let Some(u) = username {
        field(u.as_bytes());
    }
    if let Some(p) = password {
        field(p);
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// Sends a CONNECT and returns the CONNACK's reason code (v5).
pub async fn mqtt_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    connect: &[u8],
) -> std::io::Result<u8> {
    stream.write_all(connect).await?;
    stream.flush().await?;
    let mut header = [0u8; 1];
    stream.read_exact(&mut header).await?;
    if header[0] != 0x20 {
        return Err(std::io::Error::other(format!(
            "expected CONNACK, got packet type 0x{:02x}",
            header[0]
        )));
    }
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await?;
        len |= ((b[0] & 0x7f) as usize) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    body.get(1)
        .copied()
        .ok_or_else(|| std::io::Error::other("CONNACK too short"))
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
