//! `devicecloud up`: the hello world. A server with its data in the per-user directory and, in
//! the same process, a simulated device `demo` (an LED, a button, a drifting temperature)
//! enrolled like a real one. Prints the dashboard URL and the login; Ctrl-C stops both.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use proto::bundle::Bundle;
use server::{
    RunningServer,
    config::{CONFIG_FILE_NAME, ListenerKind, ServerConfig},
    runtime::{Server, ServerOptions},
};

use crate::process::{DataDirLock, raise_nofile_limit, shutdown_signal};

/// Loopback only: `up` is a demo on this machine; `--listen` opens it up.
const DEFAULT_LISTENERS: [&str; 3] = [
    "https://127.0.0.1:8443",
    "mqtts://127.0.0.1:8883",
    "mqtt://127.0.0.1:1883",
];
/// The simulated device's id.
pub const DEMO_DEVICE: &str = "demo";
/// Where `up` keeps the admin password it generated, so that later runs can print it again.
pub const PASSWORD_FILE: &str = "up-admin-password";
/// The demo agent's directory inside the data directory (bundle, outbox, simulated lines).
pub const DEMO_DIR: &str = "up-demo";
/// Written (atomically) once the server and the demo device are up, removed at shutdown: the
/// same JSON as the [`READY_PREFIX`] line, for scripts that do not read stdout.
pub const READY_FILE: &str = "ready.json";
/// Starts the one machine-readable line on stdout: `DEVICECLOUD_READY {json}`.
pub const READY_PREFIX: &str = "DEVICECLOUD_READY ";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data directory (CA, certificates, database, the demo device). Default: $DEVICECLOUD_DATA,
    /// else $XDG_DATA_HOME/devicecloud, else ~/.local/share/devicecloud.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Listen on URL instead of the defaults (repeatable): https://127.0.0.1:8443,
    /// mqtts://127.0.0.1:8883 and mqtt://127.0.0.1:1883.
    #[arg(long = "listen", value_name = "URL")]
    pub listen: Vec<String>,
}

/// A running `up`: the server and the demo device.
pub struct Up {
    pub running: RunningServer,
    pub agent: Option<agent::agent::AgentHandle>,
    pub data_dir: PathBuf,
    password: PasswordNote,
    /// Held while the server runs; released after `shutdown` has closed the journal.
    _lock: DataDirLock,
}

impl Up {
    /// Starts the server and the demo device (the device failing to start is reported, not fatal).
    pub async fn start(args: Args) -> anyhow::Result<Up> {
        let data_dir = args.data.unwrap_or_else(store::default_data_dir);
        // Before anything opens the journal or the database: a second `up` stops here.
        let lock = DataDirLock::acquire(&data_dir)?;
        // A ready file left by a killed run would describe ports that are gone.
        remove_ready_file(&data_dir);
        let nofile = raise_nofile_limit()?;
        let mut config = ServerConfig::load_or_default(&data_dir.join(CONFIG_FILE_NAME))?;
        super::server::fit_max_connections(&mut config, &nofile);
        let listen = if args.listen.is_empty() {
            DEFAULT_LISTENERS.iter().map(|s| s.to_string()).collect()
        } else {
            args.listen
        };
        let running = Server::start(ServerOptions::new(config, &data_dir).listen(listen))
            .await
            .with_context(|| {
                format!(
                    "cannot start the server (data directory {})",
                    data_dir.display()
                )
            })?;
        let password = admin_password(&data_dir, running.initial_admin_password.as_deref())?;
        let agent = match start_demo(&running, &data_dir).await {
            Ok(agent) => Some(agent),
            Err(err) => {
                eprintln!("devicecloud up: the demo device could not start: {err:#}");
                eprintln!("  the server runs anyway; see `devicecloud device list`");
                None
            }
        };
        Ok(Up {
            running,
            agent,
            data_dir,
            password,
            _lock: lock,
        })
    }

    /// What scripts need to use this `up`: addresses, the login, the CA. No secret: the
    /// password stays in its 0600 file, named here.
    pub fn ready_info(&self) -> serde_json::Value {
        let listener = |kind: ListenerKind| {
            self.running
                .listeners
                .iter()
                .find(|l| l.kind == kind)
                .map(|l| l.url.clone())
        };
        let password_file = match &self.password {
            PasswordNote::Known { path, .. } => Some(path.display().to_string()),
            PasswordNote::Unknown => None,
        };
        serde_json::json!({
            "url": api_url(&self.running).ok().map(|url| format!("{url}/")),
            "https": listener(ListenerKind::Https),
            "http": listener(ListenerKind::Http),
            "mqtts": listener(ListenerKind::Mqtts),
            "mqtt": listener(ListenerKind::Mqtt),
            "user": "admin",
            "password_file": password_file,
            "ca_cert": self.running.ctx.ca.cert_path().display().to_string(),
            "ca_sha256": self.running.ca_fingerprint(),
            "demo_device": self.agent.as_ref().map(|_| DEMO_DEVICE),
            "data": self.data_dir.display().to_string(),
            "pid": std::process::id(),
        })
    }

    /// Prints the ready line and writes the ready file.
    fn announce_ready(&self) -> anyhow::Result<()> {
        let info = self.ready_info().to_string();
        let path = self.data_dir.join(READY_FILE);
        fsutil::write_atomic(&path, info.as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY_PREFIX}{info}")?;
        out.flush()?;
        Ok(())
    }

    /// Stops the device first (it says goodbye while the broker is still there), then the server.
    pub async fn shutdown(self) {
        remove_ready_file(&self.data_dir);
        if let Some(agent) = self.agent
            && tokio::time::timeout(Duration::from_secs(5), agent.shutdown())
                .await
                .is_err()
        {
            tracing::warn!("the demo device did not stop within 5 s");
        }
        self.running.shutdown().await;
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Watched from now on, so a SIGTERM during start-up stops `up` cleanly.
    let stop = shutdown_signal();
    let up = Up::start(args).await?;
    print_welcome(&up.running, &up.data_dir, &up.password)?;
    up.announce_ready()?;
    stop.await;
    up.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn remove_ready_file(data_dir: &Path) {
    match std::fs::remove_file(data_dir.join(READY_FILE)) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(
            "cannot remove {}: {err}",
            data_dir.join(READY_FILE).display()
        ),
    }
}

/// What to print for the admin's password: the one created now (and kept in
/// `DATA/up-admin-password`, mode 0600), or the one kept by an earlier run.
fn admin_password(data_dir: &Path, created: Option<&str>) -> anyhow::Result<PasswordNote> {
    let path = data_dir.join(PASSWORD_FILE);
    if let Some(password) = created {
        fsutil::write_atomic(&path, password.as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", path.display()))?;
        return Ok(PasswordNote::Known {
            password: password.to_string(),
            path,
            new: true,
        });
    }
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(PasswordNote::Known {
            password: text.trim().to_string(),
            path,
            new: false,
        }),
        _ => Ok(PasswordNote::Unknown),
    }
}

enum PasswordNote {
    Known {
        password: String,
        path: PathBuf,
        new: bool,
    },
    /// The users were made some other way (e.g. `devicecloud server` printed the password once).
    Unknown,
}

/// Registers `demo` on first run and enrolls it through the server's own HTTPS API, like a
/// real device; later runs reuse the bundle it saved. Then starts the simulated agent.
async fn start_demo(
    running: &RunningServer,
    data_dir: &Path,
) -> anyhow::Result<agent::agent::AgentHandle> {
    let dir = data_dir.join(DEMO_DIR);
    let bundle_path = dir.join("bundle.toml");
    let store = &running.ctx.store;
    let registered = store.devices().get(DEMO_DEVICE).await?.is_some();
    let bundle = if registered && bundle_path.exists() {
        let mut bundle = Bundle::load(&bundle_path)?;
        // `--listen` may differ from the last run: the in-process device follows the server.
        if !running.ctx.broker_urls.is_empty() && bundle.broker_urls != *running.ctx.broker_urls {
            bundle.broker_urls = running.ctx.broker_urls.as_ref().clone();
            bundle.api_url = running.ctx.api_url.as_deref().map(str::to_string);
            bundle.save(&bundle_path)?;
        }
        bundle
    } else {
        if registered {
            // Registered but its bundle is gone: start it over.
            store.devices().remove(DEMO_DEVICE).await?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let bundle = enroll_demo(running).await?;
        bundle.save(&bundle_path)?;
        bundle
    };
    let config = agent::demo::demo_config(dir);
    let gpio = agent::agent::gpio_for(&config);
    let handle = agent::agent::Agent::start(config, bundle, gpio, std::future::pending()).await?;
    if !handle.wait_connected(Duration::from_secs(10)).await {
        tracing::warn!("the demo device has not connected yet; it keeps trying");
    }
    Ok(handle)
}

async fn enroll_demo(running: &RunningServer) -> anyhow::Result<Bundle> {
    let store = &running.ctx.store;
    store
        .devices()
        .add(
            DEMO_DEVICE,
            &store::DeviceCredential::Pending,
            &store::Grants::default(),
        )
        .await?;
    let code = store::secret::generate_enroll_code();
    let expires_at = store::now_ms() + 15 * 60 * 1000;
    store
        .enroll()
        .create(
            DEMO_DEVICE,
            &store::secret::hash_enroll_code(&code),
            expires_at,
        )
        .await?;
    let api_url = api_url(running)?;
    agent::enroll::enroll(&api_url, &code, &running.ca_fingerprint())
        .await
        .with_context(|| format!("enrolling the demo device at {api_url}"))
}

/// The web listener's URL as this machine reaches it.
fn api_url(running: &RunningServer) -> anyhow::Result<String> {
    let (kind, addr) = running
        .listeners
        .iter()
        .find(|l| l.kind == ListenerKind::Https)
        .or_else(|| {
            running
                .listeners
                .iter()
                .find(|l| l.kind == ListenerKind::Http)
        })
        .map(|l| (l.kind, l.addr))
        .context(
            "no https:// (or http://) listener: add one with --listen https://127.0.0.1:8443",
        )?;
    let scheme = if kind == ListenerKind::Https {
        "https"
    } else {
        "http"
    };
    // The server certificate names `localhost`; a wildcard address is reachable there too.
    let host = if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        "localhost".to_string()
    } else {
        addr.ip().to_string()
    };
    Ok(format!("{scheme}://{host}:{}", addr.port()))
}

fn print_welcome(
    running: &RunningServer,
    data_dir: &Path,
    password: &PasswordNote,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let url = api_url(running).unwrap_or_else(|_| "(no web listener)".to_string());
    writeln!(out)?;
    writeln!(out, "devicecloud is up.")?;
    writeln!(out)?;
    writeln!(out, "  Dashboard:  {url}/")?;
    match password {
        PasswordNote::Known {
            password,
            path,
            new,
        } => {
            writeln!(out, "  Login:      admin / {password}")?;
            let when = if *new {
                "created now"
            } else {
                "from the first run"
            };
            writeln!(
                out,
                "              ({when}; kept in {} so that `devicecloud up` can show it again;",
                path.display()
            )?;
            writeln!(
                out,
                "               after `devicecloud user passwd admin`, delete that file)"
            )?;
        }
        PasswordNote::Unknown => {
            writeln!(out, "  Login:      admin, with the password set earlier")?;
            writeln!(
                out,
                "              (forgotten? `devicecloud user passwd admin --data {}`)",
                data_dir.display()
            )?;
        }
    }
    writeln!(
        out,
        "  Device:     '{DEMO_DEVICE}' (simulated): toggle its LED on the device page"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "  The certificate is issued by this server's own CA, so the browser warns once; trust {}",
        running.ctx.ca.cert_path().display()
    )?;
    writeln!(
        out,
        "  (SHA-256 {}) to silence it.",
        running.ca_fingerprint()
    )?;
    for listener in &running.listeners {
        writeln!(out, "  Listening on {}", listener.url)?;
    }
    writeln!(out, "  Data in {}. Stop with Ctrl-C.", data_dir.display())?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn demo_credential(up: &Up) -> String {
        let device = up.running.ctx.store.devices().get(DEMO_DEVICE).await;
        device
            .unwrap()
            .expect("demo is registered")
            .credential
            .kind()
            .to_string()
    }

    fn args(dir: &Path) -> Args {
        Args {
            data: Some(dir.to_path_buf()),
            listen: vec!["https://127.0.0.1:0".into(), "mqtts://127.0.0.1:0".into()],
        }
    }

    #[tokio::test]
    async fn up_enrolls_the_demo_once_and_its_led_toggles_at_once() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let up = Up::start(args(dir.path())).await.unwrap();
        let agent = up.agent.as_ref().expect("the demo device started");
        assert!(agent.wait_connected(Duration::from_secs(10)).await);
        let PasswordNote::Known {
            password,
            new: true,
            ..
        } = &up.password
        else {
            panic!("no new password")
        };
        let password = password.clone();
        let kept = std::fs::read_to_string(dir.path().join(PASSWORD_FILE)).unwrap();
        assert_eq!(kept, password);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(PASSWORD_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Enrolled like a real device: a certificate, not a token.
        assert_eq!(demo_credential(&up).await, "certificate");
        let twin = up.running.ctx.twin.clone();
        let mut live = twin.subscribe();
        let confirmed = tokio::time::timeout(Duration::from_secs(10), async {
            // A command is accepted once the twin knows the device is online and has an `led`.
            let ready = |state: Option<server::twin::DeviceState>| {
                state.is_some_and(|s| {
                    s.online
                        && s.meta
                            .is_some_and(|m| m.outputs.iter().any(|o| o.name == "led"))
                })
            };
            while !ready(twin.device(DEMO_DEVICE)) {
                // Lagging only means events were skipped; the loop re-reads the state.
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = live.recv().await {
                    panic!("the twin's live stream closed");
                }
            }
            twin.send_command(DEMO_DEVICE, "led", json!(true), true)
                .await
                .expect("the device confirms the LED")
        })
        .await
        .expect("the LED toggles within 10 s");
        assert_eq!(confirmed.value, json!(true));
        assert_eq!(agent.sim().unwrap().level("led"), Some(true));
        up.shutdown().await;

        // The second run reuses the enrollment and shows the same password.
        let up = Up::start(args(dir.path())).await.unwrap();
        let PasswordNote::Known {
            password: again,
            new: false,
            ..
        } = &up.password
        else {
            panic!("password not kept")
        };
        assert_eq!(*again, password);
        assert_eq!(demo_credential(&up).await, "certificate");
        assert!(
            up.agent
                .as_ref()
                .unwrap()
                .wait_connected(Duration::from_secs(10))
                .await
        );
        up.shutdown().await;
    }
}
