//! Starting and stopping the server: first start (CA, server certificate, database, admin
//! user), the broker with the registry as its authenticator, the MQTT and web listeners, the
//! revocation watcher and the certificate renewal task.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use broker::{
    Broker, BrokerConfig,
    listener::{Accepted, BoundListener, ConnectionHandler, Scheme, ServeOptions},
    tls::{ReloadableTls, TlsOptions, TlsSettings},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::watch,
    task::JoinHandle,
};

use crate::{
    bus::{Bus, EmbeddedBus},
    config::{ListenerKind, ServerConfig},
    context::ServerContext,
    directory::StoreDirectory,
    registry::Registry,
    renew::{self, ServerCertPaths, ServerCertSpec},
};

/// How often the revocation watcher polls the store's change counter.
pub const REVOCATION_POLL: Duration = Duration::from_millis(250);

/// The name of the user created on first start.
pub const ADMIN_USER: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate authority: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("database: {0}")]
    Store(String),
    #[error("broker: {0}")]
    Broker(String),
    #[error("TLS: {0}")]
    Tls(#[from] broker::tls::TlsError),
    #[error("{0}")]
    Listen(String),
    #[error("message bus: {0}")]
    Bus(#[from] crate::bus::BusError),
}

/// What [`Server::start`] needs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub config: ServerConfig,
    pub data_dir: PathBuf,
    /// `--listen URL` flags; when non-empty they replace the configured listeners.
    pub listen: Vec<String>,
    pub revocation_poll: Duration,
    pub renewal_interval: Duration,
}

impl ServerOptions {
    pub fn new(config: ServerConfig, data_dir: impl Into<PathBuf>) -> ServerOptions {
        ServerOptions {
            config,
            data_dir: data_dir.into(),
            listen: Vec::new(),
            revocation_poll: REVOCATION_POLL,
            renewal_interval: renew::CHECK_INTERVAL,
        }
    }

    /// Replaces the listeners (e.g. `["mqtts://127.0.0.1:0", "https://127.0.0.1:0"]` in tests).
    pub fn listen(mut self, urls: impl IntoIterator<Item = impl Into<String>>) -> ServerOptions {
        self.listen = urls.into_iter().map(Into::into).collect();
        self
    }
}

/// One listener as actually bound.
#[derive(Debug, Clone)]
pub struct BoundAddr {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    /// The URL with the bound port, e.g. `mqtts://127.0.0.1:43127`.
    pub url: String,
}

pub struct Server;

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub ctx: ServerContext,
    pub listeners: Vec<BoundAddr>,
    /// The admin password created on first start (print it once; it is not stored anywhere).
    pub initial_admin_password: Option<String>,
    /// Whether this start created the CA (an empty data directory).
    pub first_start: bool,
    /// The MQTT listeners' TLS (client certificates optional, verified against our CA).
    pub mqtt_tls: ReloadableTls,
    /// The web listener's TLS (no client certificates).
    pub web_tls: ReloadableTls,
    pub ingest: crate::ingest::Ingest,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// The first listener of `kind`.
    pub fn addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.kind == kind)
            .map(|l| l.addr)
    }

    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.addr(ListenerKind::Mqtt)
    }

    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.addr(ListenerKind::Mqtts)
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.addr(ListenerKind::Https)
    }

    /// SHA-256 of the CA certificate (what `agent enroll --ca-sha256` pins).
    pub fn ca_fingerprint(&self) -> String {
        self.ctx.ca.sha256_hex()
    }

    /// A future that completes when the server is asked to stop.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        stopped(self.stop.subscribe())
    }

    /// Stops accepting, disconnects every client (their wills are published), waits for the
    /// listeners and background tasks, and closes the broker's journal.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        // serve_with already shut the broker down; again (idempotent) in case its task panicked.
        self.ctx.broker.shutdown().await;
        // Checkpoints SQLite's WAL so the database is one file again.
        self.ctx.store.close().await;
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

impl Server {
    pub async fn start(options: ServerOptions) -> Result<RunningServer, StartError> {
        let ServerOptions {
            config,
            data_dir,
            listen,
            revocation_poll,
            renewal_interval,
        } = options;
        // Listener URLs are checked before anything is created on disk.
        let listeners = config.effective_listeners(&listen)?;
        create_private_dir(&data_dir)?;

        let ca_dir = data_dir.join("ca");
        let (ca, first_start) = {
            let ca_dir = ca_dir.clone();
            blocking(move || pki::Ca::load_or_create(&ca_dir)).await??
        };
        let ca = Arc::new(ca);
        if first_start {
            tracing::info!("created the certificate authority in {}", ca_dir.display());
        }

        let cert_paths = ServerCertPaths::in_data_dir(&data_dir);
        create_private_dir(cert_paths.cert.parent().unwrap_or(&data_dir))?;
        let spec = ServerCertSpec {
            hostnames: config.cert_hostnames(),
            ips: config.cert_ip_addresses(),
            validity: Duration::from_secs(u64::from(config.certificates.server_days) * 86_400),
            renew_before: config.certificates.renew_before(),
        };
        let issued = {
            let (ca, spec, paths) = (ca.clone(), spec.clone(), cert_paths.clone());
            blocking(move || renew::ensure_server_cert(&ca, &spec, &paths)).await??
        };
        if issued != renew::Issued::Kept {
            tracing::info!(
                "issued the server certificate ({issued:?}) for {} and {}",
                spec.hostnames.join(", "),
                spec.ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }

        let store_url = config.database_url(&data_dir);
        let store = store::Store::open(&store_url)
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
        let initial_admin_password = bootstrap_admin(&store).await?;
        // Nobody is connected yet; the twin sets presence again from the status topics.
        if let Err(err) = store.devices().reset_presence().await {
            tracing::warn!("cannot reset device presence: {err}");
        }

        let mut registry =
            Registry::new(Arc::new(StoreDirectory::new(store.clone())), &config.auth);
        if let Some(role) = config.auth.anonymous_role {
            let beyond = config.allow_insecure_listeners;
            tracing::warn!(
                "anonymous MQTT clients are allowed with role {role} (auth.anonymous_role), {}",
                if beyond {
                    "from anywhere (allow_insecure_listeners = true)"
                } else {
                    "from loopback only"
                }
            );
            registry = registry.allow_anonymous(role, beyond);
        }
        let registry = Arc::new(registry);
        let broker_config = BrokerConfig {
            data_dir: Some(data_dir.join("broker")),
            limits: limits(&config),
            ..BrokerConfig::default()
        };
        let broker = Broker::open(broker_config, registry.clone())
            .await
            .map_err(|e| StartError::Broker(e.to_string()))?;
        let embedded = EmbeddedBus::with_limits(
            &broker,
            "core",
            config.bus.per_device_queue,
            config.bus.total_queue,
        );
        let bus_counters = embedded.counters().clone();
        let bus: Arc<dyn Bus> = Arc::new(embedded);

        let mqtt_tls = ReloadableTls::load(TlsSettings {
            cert: cert_paths.cert.clone(),
            key: cert_paths.key.clone(),
            client_ca: Some(ca.cert_path()),
            // Tokens and passwords work on mqtts too; a certificate, when sent, must be ours.
            require_client_cert: false,
        })?;
        let web_tls = ReloadableTls::load_with(
            TlsSettings {
                cert: cert_paths.cert.clone(),
                key: cert_paths.key.clone(),
                client_ca: None,
                require_client_cert: false,
            },
            TlsOptions {
                alpn_protocols: vec![b"http/1.1".to_vec()],
                ..TlsOptions::default()
            },
        )?;

        // Bind everything before starting anything, so a taken port fails the start cleanly.
        let mut broker_listeners = Vec::new();
        let mut web_listeners = Vec::new();
        let mut bound = Vec::new();
        for listener in &listeners {
            let tcp = TcpListener::bind(listener.addr)
                .await
                .map_err(|e| StartError::Listen(format!("cannot listen on {listener}: {e}")))?;
            let addr = tcp
                .local_addr()
                .map_err(|e| StartError::Listen(e.to_string()))?;
            bound.push(BoundAddr {
                kind: listener.kind,
                addr,
                url: listener.url_with_addr(addr),
            });
            if listener.kind.is_broker() {
                let tls = listener.kind.is_tls().then(|| mqtt_tls.clone());
                let path = listener.path.as_deref().unwrap_or("/");
                let bl = BoundListener::from_listener(tcp, scheme(listener.kind), path, tls)
                    .map_err(|e| StartError::Listen(e.to_string()))?;
                broker_listeners.push(bl);
            } else {
                web_listeners.push((tcp, listener.kind.is_tls().then(|| web_tls.clone())));
            }
        }

        let twin = crate::twin::Twin::start_with(
            bus.clone(),
            store.clone(),
            config.telemetry.max_state_names_per_device,
            config.telemetry.max_sensors_per_device,
        )
        .await?;
        let ingest = crate::ingest::start_with(
            bus.clone(),
            store.clone(),
            crate::ingest::options_from(&config.telemetry),
        )
        .await?;
        let (broker_urls, api_url) = public_urls(&config, &bound, &spec);
        let ctx = ServerContext {
            store,
            broker: broker.clone(),
            bus,
            ca: ca.clone(),
            config: Arc::new(config.clone()),
            data_dir: data_dir.clone(),
            twin,
            ingest: ingest.clone(),
            bus_counters,
            registry: registry.clone(),
            broker_urls: Arc::new(broker_urls),
            api_url: api_url.map(Arc::from),
        };

        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let serve_options = ServeOptions {
            max_connections: config
                .limits
                .max_connections
                .unwrap_or(broker::Limits::default().max_connections),
            ..ServeOptions::default()
        };
        tasks.push(tokio::spawn(broker::listener::serve_with(
            BrokerHandler(broker.clone()),
            broker_listeners,
            serve_options,
            stopped(stop_rx.clone()),
        )));
        for (tcp, tls) in web_listeners {
            tasks.push(tokio::spawn(crate::web::serve(
                ctx.clone(),
                tcp,
                tls,
                stopped(stop_rx.clone()),
            )));
        }
        let kicker = broker.clone();
        tasks.push(tokio::spawn(registry.clone().watch_revocations(
            revocation_poll,
            Arc::new(move |principal: &str| kicker.disconnect_principal(principal)),
            stopped(stop_rx.clone()),
        )));
        tasks.push(tokio::spawn(renew::renewal_task(
            ca,
            spec,
            cert_paths,
            vec![mqtt_tls.clone(), web_tls.clone()],
            renewal_interval,
            stopped(stop_rx.clone()),
        )));

        Ok(RunningServer {
            ctx,
            listeners: bound,
            initial_admin_password,
            first_start,
            mqtt_tls,
            web_tls,
            ingest,
            stop,
            tasks,
        })
    }
}

/// Runs the broker on what the listeners accept.
#[derive(Clone)]
struct BrokerHandler(Broker);

impl ConnectionHandler for BrokerHandler {
    fn handle<S>(&self, stream: S, conn: Accepted) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = broker::ConnInfo {
            peer: conn.peer,
            transport: conn.transport,
            client_cert: conn.client_cert,
            preauthenticated: None,
        };
        let broker = self.0.clone();
        async move { broker.serve_connection(stream, info).await }
    }

    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        let broker = self.0.clone();
        async move { broker.shutdown().await }
    }
}

fn scheme(kind: ListenerKind) -> Scheme {
    match kind {
        ListenerKind::Mqtt => Scheme::Mqtt,
        ListenerKind::Mqtts => Scheme::Mqtts,
        ListenerKind::Ws => Scheme::Ws,
        // Only broker kinds reach here.
        ListenerKind::Wss | ListenerKind::Http | ListenerKind::Https => Scheme::Wss,
    }
}

fn limits(config: &ServerConfig) -> broker::Limits {
    let l = &config.limits;
    let d = broker::Limits::default();
    broker::Limits {
        max_connections: l.max_connections.unwrap_or(d.max_connections),
        max_packet_size: l.max_packet_size.unwrap_or(d.max_packet_size),
        receive_maximum: l.receive_maximum.unwrap_or(d.receive_maximum),
        max_queued_messages: l.max_queued_messages.unwrap_or(d.max_queued_messages),
        max_queued_bytes: l.max_queued_bytes.unwrap_or(d.max_queued_bytes),
        connect_timeout: l
            .connect_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(d.connect_timeout),
        max_keepalive: l.max_keepalive.unwrap_or(d.max_keepalive),
        topic_alias_maximum: l.topic_alias_maximum.unwrap_or(d.topic_alias_maximum),
        max_session_expiry: l.max_session_expiry.unwrap_or(d.max_session_expiry),
        max_topic_levels: l.max_topic_levels.unwrap_or(d.max_topic_levels),
        max_topic_length: l.max_topic_length.unwrap_or(d.max_topic_length),
        max_sessions_per_principal: l
            .max_sessions_per_principal
            .unwrap_or(d.max_sessions_per_principal),
        max_retained_per_principal: l
            .max_retained_per_principal
            .unwrap_or(d.max_retained_per_principal),
        max_retained_bytes_per_principal: l
            .max_retained_bytes_per_principal
            .unwrap_or(d.max_retained_bytes_per_principal),
        max_connect_size: l.max_connect_size.unwrap_or(d.max_connect_size),
    }
}

/// The broker's defaults as config values, for `--print-config`.
pub fn default_limits() -> crate::config::LimitsConfig {
    let d = broker::Limits::default();
    crate::config::LimitsConfig {
        max_connections: Some(d.max_connections),
        max_packet_size: Some(d.max_packet_size),
        receive_maximum: Some(d.receive_maximum),
        max_queued_messages: Some(d.max_queued_messages),
        max_queued_bytes: Some(d.max_queued_bytes),
        connect_timeout_secs: Some(d.connect_timeout.as_secs()),
        max_keepalive: Some(d.max_keepalive),
        topic_alias_maximum: Some(d.topic_alias_maximum),
        max_session_expiry: Some(d.max_session_expiry),
        max_topic_levels: Some(d.max_topic_levels),
        max_topic_length: Some(d.max_topic_length),
        max_sessions_per_principal: Some(d.max_sessions_per_principal),
        max_retained_per_principal: Some(d.max_retained_per_principal),
        max_retained_bytes_per_principal: Some(d.max_retained_bytes_per_principal),
        max_connect_size: Some(d.max_connect_size),
    }
}

/// Broker and API URLs for bundles: configured, or derived from the bound listeners (a
/// wildcard address becomes the certificate's first host name, then its first non-loopback IP).
fn public_urls(
    config: &ServerConfig,
    bound: &[BoundAddr],
    spec: &ServerCertSpec,
) -> (Vec<String>, Option<String>) {
    let hosts_for = |addr: SocketAddr| -> Vec<String> {
        if !addr.ip().is_unspecified() {
            return vec![host_port(addr.ip(), addr.port())];
        }
        let mut hosts: Vec<String> = spec
            .hostnames
            .iter()
            .take(1)
            .map(|h| format!("{h}:{}", addr.port()))
            .collect();
        if let Some(ip) = spec.ips.iter().find(|ip| !ip.is_loopback()) {
            hosts.push(host_port(*ip, addr.port()));
        }
        if hosts.is_empty() {
            hosts.push(host_port(IpAddr::from([127, 0, 0, 1]), addr.port()));
        }
        hosts
    };
    let broker_urls = if config.public_broker_urls.is_empty() {
        let mut urls: Vec<String> = Vec::new();
        for b in bound.iter().filter(|b| b.kind == ListenerKind::Mqtts) {
            urls.extend(
                hosts_for(b.addr)
                    .into_iter()
                    .map(|h| format!("mqtts://{h}")),
            );
        }
        urls
    } else {
        config.public_broker_urls.clone()
    };
    let api_url = config.public_api_url.clone().or_else(|| {
        bound
            .iter()
            .find(|b| b.kind == ListenerKind::Https)
            .and_then(|b| hosts_for(b.addr).into_iter().next())
            .map(|h| format!("https://{h}"))
    });
    (broker_urls, api_url)
}

fn host_port(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// On a database without users, creates `admin` with a random password and returns it
/// (unless `devicecloud user add` made users before the first start).
async fn bootstrap_admin(store: &store::Store) -> Result<Option<String>, StartError> {
    let users = store
        .users()
        .count()
        .await
        .map_err(|e| StartError::Store(e.to_string()))?;
    if users > 0 {
        return Ok(None);
    }
    let password = store::secret::generate_password();
    let hash = {
        let password = password.clone();
        blocking(move || store::secret::hash_password(&password))
            .await?
            .map_err(|e| StartError::Store(e.to_string()))?
    };
    store
        .users()
        .add(ADMIN_USER, proto::acl::Role::Admin, &hash)
        .await
        .map_err(|e| StartError::Store(format!("cannot create the admin user: {e}")))?;
    if let Err(err) = store
        .audit()
        .append(
            "server",
            "user.add",
            ADMIN_USER,
            "first start: admin user created",
        )
        .await
    {
        tracing::warn!("cannot write the audit log: {err}");
    }
    Ok(Some(password))
}

fn create_private_dir(dir: &Path) -> Result<(), StartError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| StartError::DataDir {
        path: dir.to_owned(),
        source,
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StartError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StartError::Broker(format!("a startup task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(kind: ListenerKind, addr: &str) -> BoundAddr {
        let addr: SocketAddr = addr.parse().unwrap();
        BoundAddr {
            kind,
            addr,
            url: String::new(),
        }
    }

    #[test]
    fn public_urls_follow_the_bound_listeners() {
        let spec = ServerCertSpec {
            hostnames: vec!["pi.local".into(), "localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap(), "192.168.1.7".parse().unwrap()],
            validity: Duration::from_secs(1),
            renew_before: Duration::from_secs(0),
        };
        let listeners = [
            bound(ListenerKind::Mqtts, "0.0.0.0:8883"),
            bound(ListenerKind::Mqtt, "127.0.0.1:1883"),
            bound(ListenerKind::Https, "127.0.0.1:8443"),
        ];
        let (brokers, api) = public_urls(&ServerConfig::default(), &listeners, &spec);
        assert_eq!(
            brokers,
            ["mqtts://pi.local:8883", "mqtts://192.168.1.7:8883"]
        );
        assert_eq!(api.as_deref(), Some("https://127.0.0.1:8443"));

        let config = ServerConfig {
            public_broker_urls: vec!["mqtts://iot.example.com:8883".into()],
            public_api_url: Some("https://iot.example.com".into()),
            ..ServerConfig::default()
        };
        let (brokers, api) = public_urls(&config, &listeners, &spec);
        assert_eq!(brokers, ["mqtts://iot.example.com:8883"]);
        assert_eq!(api.as_deref(), Some("https://iot.example.com"));
    }
}
