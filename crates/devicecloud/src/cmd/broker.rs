//! `devicecloud broker`: the MQTT broker on its own, configured by flags and/or a TOML file.
//!
//! Safe by default, like mosquitto 2: with no flags it listens on mqtt://127.0.0.1:1883
//! only, and lets anonymous clients in only because nothing but this machine can reach it.
//! Anything reachable from the network needs authentication and TLS, unless
//! `--allow-insecure-listeners` says otherwise.

use std::{
    io::{IsTerminal, Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use broker::{
    auth::Authenticator,
    config::BrokerFileConfig,
    listener::{BoundListener, ListenUrl, ServeOptions},
    password_file::{AnonymousAuth, PasswordFile, PasswordFileAuth},
    tls::{ReloadableTls, TlsSettings},
};

use crate::process::{DataDirLock, raise_nofile_limit, shutdown_signal};

const DEFAULT_LISTEN: &str = "mqtt://127.0.0.1:1883";

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Where to listen: mqtt://, mqtts://, ws:// or wss:// URL with an IP address, e.g.
    /// mqtts://0.0.0.0:8883 or ws://127.0.0.1:8080/mqtt. Repeatable. Port 0 picks a free port.
    /// [default: mqtt://127.0.0.1:1883]
    #[arg(long = "listen", value_name = "URL")]
    listen: Vec<ListenUrl>,

    /// Let clients in without a user name (with every permission).
    #[arg(long)]
    allow_anonymous: bool,

    /// Users and argon2 password hashes, one `user:hash` per line; create with
    /// `devicecloud broker passwd FILE USER`. Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,

    /// PEM certificate chain for mqtts:// and wss:// listeners (reloaded when it changes).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): TLS clients must present a certificate signed by it; they are
    /// let in as `cert:<common name>` without a password.
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,

    /// With --client-ca: also accept TLS clients without a certificate (they then need a
    /// user name and password, or --allow-anonymous).
    #[arg(long)]
    client_cert_optional: bool,

    /// Directory for persistent sessions and retained messages (kept across restarts).
    /// Without it everything is in memory.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,

    /// TOML file with the same settings (flags take precedence).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Allow what exposes MQTT traffic or the broker itself to the network: plain mqtt:// and
    /// ws:// listeners on non-loopback addresses (passwords and messages travel unencrypted),
    /// and anonymous clients on non-loopback addresses.
    #[arg(long)]
    allow_insecure_listeners: bool,

    /// Maximum simultaneous client connections.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,

    /// Maximum levels in a topic name or filter. [default: 32]
    #[arg(long, value_name = "N")]
    max_topic_levels: Option<usize>,

    /// Maximum bytes in a topic name or filter. [default: 1024]
    #[arg(long, value_name = "BYTES")]
    max_topic_length: Option<usize>,

    /// Maximum sessions (connected or persisted) per user (every anonymous client counts as
    /// one user). [default: no limit; `devicecloud server` uses 16 per device or user]
    #[arg(long, value_name = "N")]
    max_sessions_per_principal: Option<usize>,

    /// Maximum retained messages per user. [default: no limit; `devicecloud server` uses 100
    /// per device or user]
    #[arg(long, value_name = "N")]
    max_retained_per_principal: Option<usize>,

    /// Maximum bytes (topic + payload) of retained messages per user. [default: no limit;
    /// `devicecloud server` uses 262144 per device or user]
    #[arg(long, value_name = "BYTES")]
    max_retained_bytes_per_principal: Option<usize>,

    /// Maximum CONNECT packet size, checked before authentication. [default: 65536]
    #[arg(long, value_name = "BYTES")]
    max_connect_size: Option<u32>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Add a user to a password file, or change their password. The password is read from
    /// standard input (prompted for, without echo, on a terminal).
    Passwd {
        /// The password file (created with mode 0600 if missing).
        file: PathBuf,
        /// The user name.
        user: String,
    },
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(Command::Passwd { file, user }) = &args.command {
        return passwd(file, user);
    }
    let settings = Settings::resolve(args)?;
    // Before the journal is opened: a second broker on the same --data stops here.
    let _lock = settings
        .data
        .as_deref()
        .map(DataDirLock::acquire)
        .transpose()?;
    let nofile = raise_nofile_limit()?;
    // Watched from now on, so a SIGTERM during start-up stops the broker cleanly.
    let stop = shutdown_signal();
    let tls = match &settings.tls {
        Some(tls) => {
            Some(ReloadableTls::load(tls.clone()).context("cannot load the TLS certificate")?)
        }
        None => None,
    };
    let password_auth = match &settings.password_file {
        Some(path) => Some(Arc::new(
            PasswordFileAuth::load(path)?
                .allow_anonymous(settings.anonymous)
                .accept_client_certs(settings.client_ca()),
        )),
        None if settings.client_ca() => Some(Arc::new(
            PasswordFileAuth::new(PasswordFile::default())
                .allow_anonymous(settings.anonymous)
                .accept_client_certs(true),
        )),
        None => None,
    };
    let auth: Arc<dyn Authenticator> = match &password_auth {
        Some(auth) => auth.clone(),
        None => Arc::new(AnonymousAuth),
    };

    let mut config = broker::BrokerConfig {
        data_dir: settings.data.clone(),
        ..Default::default()
    };
    settings.apply_limits(&mut config);
    let broker =
        broker::Broker::open(config, auth)
            .await
            .with_context(|| match &settings.data {
                Some(dir) => format!("cannot open the broker's data directory {}", dir.display()),
                None => "cannot start the broker".to_owned(),
            })?;

    let mut listeners = Vec::new();
    for url in &settings.listen {
        let tls = if url.scheme.is_tls() {
            tls.clone()
        } else {
            None
        };
        listeners.push(BoundListener::bind(url, tls).await?);
    }
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }

    tracing::info!(
        "devicecloud broker {}: {}; {}",
        broker::VERSION,
        settings.auth_summary(),
        match &settings.data {
            Some(dir) => format!("sessions and retained messages kept in {}", dir.display()),
            None => "in-memory only (no --data)".to_owned(),
        }
    );
    // Always handle SIGHUP, so that it never terminates the broker (its default action);
    // TLS certificates reload themselves on it (see ReloadableTls).
    #[cfg(unix)]
    spawn_sighup_handler(
        password_auth
            .clone()
            .filter(|_| settings.password_file.is_some()),
    );
    let options = ServeOptions {
        max_connections: nofile.max_connections(
            settings.max_connections,
            ServeOptions::default().max_connections,
        ),
        handshake_timeout: settings
            .handshake_timeout
            .unwrap_or(ServeOptions::default().handshake_timeout),
        ..ServeOptions::default()
    };
    broker::listener::serve_with(broker, listeners, options, stop).await;
    tracing::info!("broker stopped");
    Ok(ExitCode::SUCCESS)
}

/// Everything the flags and the config file say, merged and checked.
#[derive(Debug)]
struct Settings {
    listen: Vec<ListenUrl>,
    anonymous: bool,
    password_file: Option<PathBuf>,
    tls: Option<TlsSettings>,
    data: Option<PathBuf>,
    file_limits: broker::config::LimitsConfig,
    max_connections: Option<usize>,
    handshake_timeout: Option<Duration>,
    /// Said at startup, once the listeners are bound.
    warnings: Vec<String>,
}

impl Settings {
    fn resolve(args: Args) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => BrokerFileConfig::load(path)?,
            None => BrokerFileConfig::default(),
        };
        let listen = match (args.listen.is_empty(), file.listen.is_empty()) {
            (false, _) => args.listen,
            (true, false) => file.listen,
            (true, true) => vec![DEFAULT_LISTEN.parse().map_err(anyhow::Error::msg)?],
        };
        let password_file = args.password_file.or(file.password_file);
        let tls_cert = args.tls_cert.or(file.tls_cert);
        let tls_key = args.tls_key.or(file.tls_key);
        let client_ca = args.client_ca.or(file.client_ca);
        let require_client_cert =
            !args.client_cert_optional && file.require_client_cert.unwrap_or(true);
        if !require_client_cert && client_ca.is_none() {
            bail!(
                "--client-cert-optional (require_client_cert = false) only makes sense with --client-ca FILE"
            );
        }
        let insecure_ok =
            args.allow_insecure_listeners || file.allow_insecure_listeners.unwrap_or(false);
        let explicit_anonymous = args.allow_anonymous || file.allow_anonymous.unwrap_or(false);

        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert,
                key,
                client_ca,
                require_client_cert,
            }),
            (None, None) => {
                if client_ca.is_some() {
                    bail!(
                        "client_ca needs tls_cert and tls_key: client certificates are only checked on mqtts:// and wss:// listeners"
                    );
                }
                None
            }
            (Some(_), None) => bail!(
                "tls_cert is set but tls_key is not: give both (--tls-cert FILE --tls-key FILE)"
            ),
            (None, Some(_)) => bail!(
                "tls_key is set but tls_cert is not: give both (--tls-cert FILE --tls-key FILE)"
            ),
        };
        if let Some(url) = listen.iter().find(|url| url.scheme.is_tls()) {
            if tls.is_none() {
                bail!(
                    "{url} is a TLS listener: add --tls-cert FILE --tls-key FILE (PEM certificate chain and private key)"
                );
            }
        } else if tls.is_some() {
            bail!(
                "--tls-cert is given but no listener uses TLS: add e.g. --listen mqtts://0.0.0.0:8883"
            );
        }

        let has_auth =
            password_file.is_some() || tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        let exposed: Vec<&ListenUrl> = listen.iter().filter(|url| !url.is_loopback()).collect();
        let mut warnings = Vec::new();
        // Without any authentication configured, anonymous access is implied, which is only
        // acceptable while nothing but this machine can connect.
        let anonymous = explicit_anonymous || !has_auth;
        if anonymous && !exposed.is_empty() {
            let urls = join(&exposed);
            if !insecure_ok {
                if has_auth || explicit_anonymous {
                    bail!(
                        "anonymous clients would be allowed on {urls}, which other machines can reach; \
                         add --allow-insecure-listeners if that is really intended"
                    );
                }
                bail!(
                    "{urls} can be reached from other machines but no authentication is configured: \
                     add --password-file FILE (create it with `devicecloud broker passwd FILE USER`) or \
                     --client-ca FILE; or, to let anyone in, --allow-anonymous --allow-insecure-listeners"
                );
            }
            warnings.push(format!(
                "anonymous clients are allowed on {urls}, reachable from other machines"
            ));
        }
        let plain: Vec<&ListenUrl> = exposed
            .iter()
            .copied()
            .filter(|url| !url.scheme.is_tls())
            .collect();
        if !plain.is_empty() {
            let urls = join(&plain);
            if !insecure_ok {
                bail!(
                    "{urls} would carry passwords and messages unencrypted to other machines: listen on mqtts:// or \
                     wss:// with --tls-cert/--tls-key, bind to 127.0.0.1, or add --allow-insecure-listeners"
                );
            }
            warnings.push(format!(
                "unencrypted listener(s) reachable from other machines: {urls}"
            ));
        }
        if anonymous && exposed.is_empty() && !explicit_anonymous {
            tracing::info!(
                "no authentication configured: anonymous clients are allowed because every listener is loopback-only"
            );
        }
        Ok(Settings {
            listen,
            anonymous,
            password_file,
            tls,
            data: args.data.or(file.data),
            max_connections: args.max_connections.or(file.limits.max_connections),
            handshake_timeout: file.limits.handshake_timeout_secs.map(Duration::from_secs),
            file_limits: broker::config::LimitsConfig {
                max_topic_levels: args.max_topic_levels.or(file.limits.max_topic_levels),
                max_topic_length: args.max_topic_length.or(file.limits.max_topic_length),
                max_sessions_per_principal: args
                    .max_sessions_per_principal
                    .or(file.limits.max_sessions_per_principal),
                max_retained_per_principal: args
                    .max_retained_per_principal
                    .or(file.limits.max_retained_per_principal),
                max_retained_bytes_per_principal: args
                    .max_retained_bytes_per_principal
                    .or(file.limits.max_retained_bytes_per_principal),
                max_connect_size: args.max_connect_size.or(file.limits.max_connect_size),
                ..file.limits
            },
            warnings,
        })
    }

    fn auth_summary(&self) -> String {
        let mut ways = Vec::new();
        if let Some(file) = &self.password_file {
            ways.push(format!("users from {}", file.display()));
        }
        if let Some(tls) = self.tls.as_ref().filter(|t| t.client_ca.is_some()) {
            let required = if tls.require_client_cert {
                "required"
            } else {
                "optional"
            };
            ways.push(format!("client certificates ({required})"));
        }
        if self.anonymous {
            ways.push("anonymous clients".to_owned());
        }
        format!("accepting {}", ways.join(", "))
    }

    fn client_ca(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }

    fn apply_limits(&self, config: &mut broker::BrokerConfig) {
        let (file, limits) = (&self.file_limits, &mut config.limits);
        if let Some(v) = self.max_connections {
            limits.max_connections = v;
        }
        if let Some(v) = file.max_packet_size {
            limits.max_packet_size = v;
        }
        if let Some(v) = file.receive_maximum {
            limits.receive_maximum = v;
        }
        if let Some(v) = file.max_queued_messages {
            limits.max_queued_messages = v;
        }
        if let Some(v) = file.max_queued_bytes {
            limits.max_queued_bytes = v;
        }
        if let Some(v) = file.connect_timeout_secs {
            limits.connect_timeout = Duration::from_secs(v);
        }
        if let Some(v) = file.max_keepalive {
            limits.max_keepalive = v;
        }
        if let Some(v) = file.topic_alias_maximum {
            limits.topic_alias_maximum = v;
        }
        if let Some(v) = file.max_session_expiry {
            limits.max_session_expiry = v;
        }
        if let Some(v) = file.max_topic_levels {
            limits.max_topic_levels = v;
        }
        if let Some(v) = file.max_topic_length {
            limits.max_topic_length = v;
        }
        // The standalone broker's principals are shared accounts (every anonymous client is
        // `anonymous`, a password-file user is typically one login for many clients, as with
        // mosquitto), so limits per principal are off unless set. The server, whose principals
        // are single devices, users and tokens, keeps the broker's defaults.
        limits.max_sessions_per_principal = file.max_sessions_per_principal.unwrap_or(usize::MAX);
        limits.max_retained_per_principal = file.max_retained_per_principal.unwrap_or(usize::MAX);
        limits.max_retained_bytes_per_principal =
            file.max_retained_bytes_per_principal.unwrap_or(usize::MAX);
        if let Some(v) = file.max_connect_size {
            limits.max_connect_size = v;
        }
        if let Some(v) = file.sys_interval_secs {
            config.sys_interval = Duration::from_secs(v);
        }
    }
}

fn join(urls: &[&ListenUrl]) -> String {
    urls.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(unix)]
fn spawn_sighup_handler(passwords: Option<Arc<PasswordFileAuth>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(err) => {
            tracing::warn!("cannot listen for SIGHUP, reload on signal disabled: {err}");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(auth) = &passwords else {
                tracing::info!("SIGHUP received");
                continue;
            };
            match auth.reload() {
                Ok(users) => tracing::info!("reloaded the password file: {users} user(s)"),
                Err(err) => tracing::error!(
                    "password file reload failed, keeping the previous users: {err}"
                ),
            }
        }
    });
}

fn passwd(file: &Path, user: &str) -> anyhow::Result<ExitCode> {
    let password = if std::io::stdin().is_terminal() {
        let first = prompt_hidden(&format!("Password for {user}: "))?;
        let second = prompt_hidden("Again: ")?;
        if first != second {
            bail!("the passwords do not match; nothing was changed");
        }
        first
    } else {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("cannot read the password from standard input")?;
        let line = input.strip_suffix('\n').unwrap_or(&input);
        line.strip_suffix('\r').unwrap_or(line).to_owned()
    };
    if password.is_empty() {
        bail!(
            "the password is empty; give one on standard input, e.g. `printf %s 'secret' | devicecloud broker passwd FILE USER`"
        );
    }
    let existed = PasswordFile::load(file).is_ok_and(|f| f.contains(user));
    PasswordFile::set_user(file, user, &password)?;
    eprintln!(
        "{} user {user:?} in {}",
        if existed { "updated" } else { "added" },
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads a line from the terminal with echo off. `stty` keeps this free of a terminal
/// library; it only runs when standard input is a terminal.
fn prompt_hidden(prompt: &str) -> anyhow::Result<String> {
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
    };
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let echo_off = stty("-echo").is_ok_and(|s| s.success());
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    if echo_off {
        let _ = stty("echo");
    }
    eprintln!();
    read.context("cannot read the password from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn resolve(argv: &[&str]) -> anyhow::Result<Settings> {
        let cli = Cli::try_parse_from(std::iter::once("broker").chain(argv.iter().copied()))?;
        Settings::resolve(cli.args)
    }

    fn err(argv: &[&str]) -> String {
        format!("{:#}", resolve(argv).unwrap_err())
    }

    #[test]
    fn default_is_loopback_plain_and_anonymous() {
        let s = resolve(&[]).unwrap();
        assert_eq!(
            s.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["mqtt://127.0.0.1:1883"]
        );
        assert!(s.anonymous && s.warnings.is_empty());
    }

    #[test]
    fn exposed_listeners_need_auth_tls_or_the_insecure_flag() {
        let e = err(&["--listen", "mqtt://0.0.0.0:1883"]);
        assert!(
            e.contains("no authentication is configured") && e.contains("--password-file"),
            "{e}"
        );
        let e = err(&["--listen", "mqtt://0.0.0.0:1883", "--password-file", "pw"]);
        assert!(
            e.contains("unencrypted") && e.contains("--allow-insecure-listeners"),
            "{e}"
        );
        let e = err(&[
            "--listen",
            "mqtts://0.0.0.0:8883",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--allow-anonymous",
        ]);
        assert!(
            e.contains("anonymous clients would be allowed")
                && e.contains("--allow-insecure-listeners"),
            "{e}"
        );

        let s = resolve(&[
            "--listen",
            "ws://0.0.0.0:8080",
            "--allow-anonymous",
            "--allow-insecure-listeners",
        ])
        .unwrap();
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        let s = resolve(&[
            "--listen",
            "mqtts://0.0.0.0:8883",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--password-file",
            "pw",
        ])
        .unwrap();
        assert!(!s.anonymous && s.warnings.is_empty());
        let s = resolve(&[
            "--listen",
            "mqtts://[::]:8883",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--client-ca",
            "ca",
        ])
        .unwrap();
        assert!(!s.anonymous && s.tls.unwrap().require_client_cert);
    }

    #[test]
    fn tls_settings_must_be_consistent() {
        let e = err(&["--listen", "mqtts://127.0.0.1:8883"]);
        assert!(e.contains("--tls-cert FILE --tls-key FILE"), "{e}");
        let e = err(&["--tls-cert", "c", "--tls-key", "k"]);
        assert!(e.contains("no listener uses TLS"), "{e}");
        let e = err(&["--tls-cert", "c"]);
        assert!(e.contains("tls_key is not"), "{e}");
        let e = err(&["--client-cert-optional"]);
        assert!(e.contains("--client-ca"), "{e}");
        let e = err(&["--listen", "mqtt://127.0.0.1:bad"]);
        assert!(e.contains("port must be"), "{e}");
    }

    #[test]
    fn hardening_limits_come_from_flags_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(
            &path,
            "[limits]\nmax_topic_levels = 10\nmax_sessions_per_principal = 3\nmax_connect_size = 2048\n",
        )
        .unwrap();
        let s = resolve(&[
            "--config",
            path.to_str().unwrap(),
            "--max-topic-levels",
            "12",
            "--max-retained-per-principal",
            "5",
            "--max-retained-bytes-per-principal",
            "4096",
            "--max-topic-length",
            "300",
        ])
        .unwrap();
        let mut config = broker::BrokerConfig::default();
        s.apply_limits(&mut config);
        let l = &config.limits;
        assert_eq!(l.max_topic_levels, 12);
        assert_eq!(l.max_topic_length, 300);
        assert_eq!(l.max_sessions_per_principal, 3);
        assert_eq!(l.max_retained_per_principal, 5);
        assert_eq!(l.max_retained_bytes_per_principal, 4096);
        assert_eq!(l.max_connect_size, 2048);
    }

    #[test]
    fn limits_per_principal_are_off_unless_set() {
        // Anonymous clients all share one principal: 16 sessions or 100 retained messages
        // for all of them together would break ordinary mosquitto-style use.
        let s = resolve(&[]).unwrap();
        let mut config = broker::BrokerConfig::default();
        s.apply_limits(&mut config);
        let l = &config.limits;
        assert_eq!(l.max_sessions_per_principal, usize::MAX);
        assert_eq!(l.max_retained_per_principal, usize::MAX);
        assert_eq!(l.max_retained_bytes_per_principal, usize::MAX);
        assert_eq!(
            l.max_topic_levels,
            broker::Limits::default().max_topic_levels
        );
    }

    #[test]
    fn config_file_is_merged_under_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(
            &path,
            "listen = [\"ws://127.0.0.1:0\"]\ndata = \"state\"\n[limits]\nmax_connections = 7\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = resolve(&["--config", p]).unwrap();
        assert_eq!(s.listen[0].to_string(), "ws://127.0.0.1:0/mqtt");
        assert_eq!(s.data.unwrap(), dir.path().join("state"));
        assert_eq!(s.max_connections, Some(7));
        let s = resolve(&[
            "--config",
            p,
            "--listen",
            "mqtt://127.0.0.1:0",
            "--max-connections",
            "9",
        ])
        .unwrap();
        assert_eq!(s.listen[0].to_string(), "mqtt://127.0.0.1:0");
        assert_eq!(s.max_connections, Some(9));

        std::fs::write(
            &path,
            "listen = [\"ws://127.0.0.1:0\"]\nmax_conections = 7\n",
        )
        .unwrap();
        let e = err(&["--config", p]);
        assert!(
            e.contains("broker.toml:2:1") && e.contains("max_conections"),
            "{e}"
        );
    }
}
