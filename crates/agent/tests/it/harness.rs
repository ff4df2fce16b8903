//! A throw-away PKI and an in-process broker with a TLS listener that can be stopped and
//! restarted on the same port (an outage as the agent sees it).

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use agent::{Agent, AgentConfig, AgentHandle, SimGpio};
use broker::{
    Broker, BrokerConfig,
    auth::{AuthError, AuthFuture, Authenticator, ConnectRequest, Identity},
    listener::{Accepted, BoundListener, ConnectionHandler, Scheme, ServeOptions},
    tls::{ReloadableTls, TlsOptions, TlsSettings},
};
use proto::bundle::{Bundle, Credentials};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::oneshot,
    task::JoinHandle,
};

pub struct Pki {
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    pub issuer: rcgen::Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "agent test ca");
        let ca = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// (cert_pem, key_pem) for `cn`, valid for 127.0.0.1 and localhost.
    pub fn issue(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Devices authenticate with their certificate: principal `device:{CN}`, full rights (the
/// ACL engine is tested elsewhere).
struct CertAuth;

impl Authenticator for CertAuth {
    fn authenticate<'a>(&'a self, request: ConnectRequest<'a>) -> AuthFuture<'a> {
        Box::pin(async move {
            match request.client_cert.and_then(|c| c.common_name.clone()) {
                Some(cn) => Ok(Identity::superuser(format!("device:{cn}"))),
                None => Err(AuthError::BadCredentials),
            }
        })
    }
}

/// Stopping the listener cuts the device's connections but keeps the broker (and the test's
/// in-process subscriptions) alive.
#[derive(Clone)]
struct Outage(Broker);

impl ConnectionHandler for Outage {
    async fn handle<S>(&self, stream: S, conn: Accepted)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = broker::ConnInfo {
            peer: conn.peer,
            transport: conn.transport,
            client_cert: conn.client_cert,
            preauthenticated: None,
        };
        self.0.serve_connection(stream, info).await
    }

    async fn shutdown(&self) {
        self.0.disconnect_principal("device:d1");
    }
}

pub struct TestBroker {
    pub broker: Broker,
    pub addr: SocketAddr,
    pub pki: Pki,
    tls: ReloadableTls,
    _dir: tempfile::TempDir,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pki.issue("localhost");
        std::fs::write(dir.path().join("server.pem"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
        let tls = ReloadableTls::load_with(
            TlsSettings {
                cert: dir.path().join("server.pem"),
                key: dir.path().join("server.key"),
                client_ca: Some(dir.path().join("ca.pem")),
                require_client_cert: true,
            },
            TlsOptions {
                poll_interval: None,
                reload_on_sighup: false,
                ..TlsOptions::default()
            },
        )
        .unwrap();
        let config = BrokerConfig {
            sys_interval: Duration::ZERO,
            ..BrokerConfig::default()
        };
        let broker = Broker::open(config, Arc::new(CertAuth)).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut this = TestBroker {
            broker,
            addr,
            pki,
            tls,
            _dir: dir,
            running: None,
        };
        this.serve(listener);
        this
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let bound =
            BoundListener::from_listener(listener, Scheme::Mqtts, "/", Some(self.tls.clone()))
                .unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let options = ServeOptions {
            drain_timeout: Duration::from_secs(2),
            ..ServeOptions::default()
        };
        let task = tokio::spawn(broker::listener::serve_with(
            Outage(self.broker.clone()),
            vec![bound],
            options,
            async {
                let _ = rx.await;
            },
        ));
        self.running = Some((tx, task));
    }

    /// Stops accepting and cuts the device off.
    pub async fn stop_listener(&mut self) {
        if let Some((tx, task)) = self.running.take() {
            let _ = tx.send(());
            task.await.unwrap();
        }
    }

    /// Listens again on the same port.
    pub async fn restart_listener(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    pub fn bundle(&self, device: &str) -> Bundle {
        let (cert_pem, key_pem) = self.pki.issue(device);
        Bundle {
            device_id: device.into(),
            broker_urls: vec![format!("mqtts://127.0.0.1:{}", self.addr.port())],
            api_url: None,
            ca_pem: self.pki.ca_pem.clone(),
            credentials: Credentials::Certificate { cert_pem, key_pem },
        }
    }
}

/// Parses an agent config and points its data at `dir`.
pub fn config(text: &str, dir: &Path) -> AgentConfig {
    let mut c = AgentConfig::parse(text, "test agent.toml").unwrap();
    c.data_dir = dir.to_path_buf();
    c.link.backoff_initial_ms = 50;
    c.link.backoff_max_ms = 200;
    c
}

pub async fn start_agent(config: AgentConfig, bundle: Bundle) -> (AgentHandle, SimGpio) {
    let sim = SimGpio::in_data_dir(&config.data_dir);
    let agent = Agent::start(
        config,
        bundle,
        Arc::new(sim.clone()),
        std::future::pending(),
    )
    .await
    .unwrap();
    (agent, sim)
}

/// Receives from an in-process subscription until `pred` matches, within `timeout`.
pub async fn recv_until(
    sub: &mut broker::LocalSubscription,
    timeout: Duration,
    mut pred: impl FnMut(&broker::Message) -> bool,
) -> broker::Message {
    tokio::time::timeout(timeout, async {
        loop {
            let m = sub.recv().await.expect("subscription ended");
            if pred(&m) {
                return m;
            }
        }
    })
    .await
    .expect("timed out waiting for a message")
}

pub fn json(m: &broker::Message) -> serde_json::Value {
    serde_json::from_slice(&m.payload).unwrap()
}
