//! The brokers under test, each started as a child process on free loopback ports.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::pki::Pki;

/// Per-client outbound in-flight window (our broker's default) and a queue large enough that
/// a subscriber falling behind for a moment loses nothing: the same for both brokers.
pub const MAX_INFLIGHT: u16 = 256;
pub const MAX_QUEUED: usize = 1_000_000;
/// mosquitto's `max_queued_bytes` is 0 (no byte bound) by default; ours gets one this large
/// so that the queue bound is the same message count for both.
pub const MAX_QUEUED_BYTES: usize = 1 << 30;
pub const MAX_CONNECTIONS: usize = 20_000;

pub struct Target {
    pub name: &'static str,
    pub port: u16,
    pub tls_port: u16,
    pub pid: u32,
    child: Child,
    dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Target {
    pub async fn devicecloud(bin: &Path, pki: &Pki) -> anyhow::Result<Target> {
        let dir = tempfile::tempdir()?;
        pki.write(dir.path())?;
        let (port, tls_port) = (free_port()?, free_port()?);
        let conf_path = dir.path().join("devicecloud.toml");
        std::fs::write(
            &conf_path,
            format!(
                "[limits]\nmax_connections = {MAX_CONNECTIONS}\nreceive_maximum = {MAX_INFLIGHT}\n\
                 max_queued_messages = {MAX_QUEUED}\nmax_queued_bytes = {MAX_QUEUED_BYTES}\n"
            ),
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg("broker")
            .arg("--config")
            .arg(&conf_path)
            .arg("--listen")
            .arg(format!("mqtt://127.0.0.1:{port}"))
            .arg("--listen")
            .arg(format!("mqtts://127.0.0.1:{tls_port}"))
            .arg("--tls-cert")
            .arg(dir.path().join("cert.pem"))
            .arg("--tls-key")
            .arg(dir.path().join("key.pem"))
            .arg("--allow-anonymous")
            .env("DEVICECLOUD_LOG", "warn");
        Target::spawn("devicecloud", cmd, dir, port, tls_port).await
    }

    pub async fn mosquitto(bin: &Path, pki: &Pki) -> anyhow::Result<Target> {
        let dir = tempfile::tempdir()?;
        pki.write(dir.path())?;
        let (port, tls_port) = (free_port()?, free_port()?);
        let d = dir.path().display();
        let conf = format!(
            "per_listener_settings false\n\
             allow_anonymous true\n\
             persistence false\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             max_inflight_messages {MAX_INFLIGHT}\n\
             max_queued_messages {MAX_QUEUED}\n\
             max_connections -1\n\
             set_tcp_nodelay true\n\
             listener {port} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\n\
             cafile {d}/ca.pem\n\
             certfile {d}/cert.pem\n\
             keyfile {d}/key.pem\n"
        );
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&conf_path);
        Target::spawn("mosquitto", cmd, dir, port, tls_port).await
    }

    async fn spawn(
        name: &'static str,
        mut cmd: Command,
        dir: tempfile::TempDir,
        port: u16,
        tls_port: u16,
    ) -> anyhow::Result<Target> {
        let log = std::fs::File::create(dir.path().join("broker.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        let pid = child.id().context("child has no pid")?;
        let mut target = Target {
            name,
            port,
            tls_port,
            pid,
            child,
            dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ready = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
                && tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
                    .await
                    .is_ok();
            if ready {
                return Ok(target);
            }
            if let Some(status) = target.child.try_wait()? {
                bail!(
                    "{name} exited with {status} during startup:\n{}",
                    target.log()
                );
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{name} did not listen on 127.0.0.1:{port} within 10 s:\n{}",
                    target.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn tls_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.tls_port)
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// Fails if the broker died (e.g. crashed under load).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}:\n{}", self.name, self.log());
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
