//! Network listeners: `mqtt://`, `mqtts://`, `ws://` and `wss://` URLs, binding them, and
//! the accept loops that hand each connection — after its TLS and WebSocket handshakes —
//! to the broker.
//!
//! The accept loop only accepts: handshakes run in the connection's own task under a
//! deadline, so a slow or malicious client can never stall other clients' connects.

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::auth::{ClientCert, Transport};
pub use crate::tls::{ReloadableTls, TlsSettings};

/// The four kinds of listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Mqtt,
    Mqtts,
    Ws,
    Wss,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }
    pub fn is_websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }
    pub fn transport(self) -> Transport {
        match self {
            Scheme::Mqtt => Transport::Tcp,
            Scheme::Mqtts => Transport::Tls,
            Scheme::Ws => Transport::Ws,
            Scheme::Wss => Transport::Wss,
        }
    }
    /// The customary port: 1883, 8883, 80 and 443 (as mosquitto and most clients assume).
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }
}

/// Where to listen, e.g. `mqtt://127.0.0.1:1883`, `mqtts://0.0.0.0:8883`,
/// `ws://[::1]:8080/mqtt`. Port 0 picks a free port. The host must be an IP address
/// (`localhost` is accepted as 127.0.0.1) so that it is always clear which interfaces are
/// exposed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenUrl {
    pub scheme: Scheme,
    pub addr: SocketAddr,
    /// The HTTP path of WebSocket listeners (`/mqtt` by default; `/` is always accepted too).
    /// Always `/` for `mqtt://` and `mqtts://`.
    pub path: String,
}

/// The default WebSocket path, as used by mosquitto, HiveMQ and most browser clients.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid listen URL {url:?}: {what}")]
pub struct ListenUrlError {
    pub url: String,
    pub what: String,
}

impl FromStr for ListenUrl {
    type Err = ListenUrlError;

    fn from_str(url: &str) -> Result<ListenUrl, ListenUrlError> {
        let fail = |what: &str| ListenUrlError {
            url: url.to_owned(),
            what: what.to_owned(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            fail("expected scheme://host:port, e.g. mqtt://127.0.0.1:1883, mqtts://0.0.0.0:8883 or ws://127.0.0.1:8080/mqtt")
        })?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => Scheme::Mqtt,
            "mqtts" | "ssl" | "tls" => Scheme::Mqtts,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            _ => return Err(fail("the scheme must be mqtt, mqtts, ws or wss")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') || path.contains(['?', '#']) {
            return Err(fail("user info, queries and fragments are not allowed"));
        }
        let path = match (scheme.is_websocket(), path) {
            (true, "") => DEFAULT_WS_PATH.to_owned(),
            (true, path) => path.to_owned(),
            (false, "" | "/") => "/".to_owned(),
            (false, _) => return Err(fail("only ws:// and wss:// listeners have a path")),
        };
        let (host, port) = split_host_port(authority).map_err(|what| fail(&what))?;
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse::<IpAddr>().map_err(|_| {
                fail("the host must be an IP address such as 127.0.0.1 (this machine only), 0.0.0.0 (all IPv4 interfaces) or [::] (all IPv6)")
            })?
        };
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| fail("the port must be a number from 0 to 65535"))?,
            None => scheme.default_port(),
        };
        Ok(ListenUrl {
            scheme,
            addr: SocketAddr::new(ip, port),
            path,
        })
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if authority.is_empty() {
        return Err("missing host".into());
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed '[' in IPv6 address")?;
        return match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|port| (host, Some(port)))
                .ok_or_else(|| "expected :port after ]".into()),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => {
            Err("write IPv6 addresses in brackets, e.g. [::1]:1883".into())
        }
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((authority, None)),
    }
}

impl fmt::Display for ListenUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.addr)?;
        if self.scheme.is_websocket() {
            f.write_str(&self.path)?;
        }
        Ok(())
    }
}

impl ListenUrl {
    /// Only reachable from this machine.
    pub fn is_loopback(&self) -> bool {
        self.addr.ip().is_loopback()
    }
}

/// A listener whose socket is bound (so its port is known) but not yet accepting.
#[derive(Debug)]
pub struct BoundListener {
    url: ListenUrl,
    listener: TcpListener,
    tls: Option<ReloadableTls>,
}

impl BoundListener {
    /// Binds `url`. TLS URLs (`mqtts`, `wss`) need `tls`; plain ones must not get one.
    pub async fn bind(url: &ListenUrl, tls: Option<ReloadableTls>) -> io::Result<BoundListener> {
        check_tls(url, &tls)?;
        let listener = TcpListener::bind(url.addr)
            .await
            .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {url}: {err}")))?;
        Self::from_listener(listener, url.scheme, &url.path, tls)
    }

    /// Wraps a listener the caller bound itself.
    pub fn from_listener(
        listener: TcpListener,
        scheme: Scheme,
        path: &str,
        tls: Option<ReloadableTls>,
    ) -> io::Result<BoundListener> {
        let addr = listener.local_addr()?;
        let path = if scheme.is_websocket() {
            path.to_owned()
        } else {
            "/".to_owned()
        };
        let url = ListenUrl { scheme, addr, path };
        check_tls(&url, &tls)?;
        Ok(BoundListener { url, listener, tls })
    }

    /// The URL with the port actually bound (useful with port 0).
    pub fn local_url(&self) -> ListenUrl {
        self.url.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.url.addr
    }
}

fn check_tls(url: &ListenUrl, tls: &Option<ReloadableTls>) -> io::Result<()> {
    match (url.scheme.is_tls(), tls.is_some()) {
        (true, false) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url} needs a TLS certificate and key (--tls-cert and --tls-key)"),
        )),
        (false, true) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url} is a plain listener; use mqtts:// or wss:// for TLS"),
        )),
        _ => Ok(()),
    }
}

/// What the listener knows about a connection once its handshakes are done.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub peer: SocketAddr,
    pub transport: Transport,
    /// The client certificate, verified against the listener's client CA.
    pub client_cert: Option<ClientCert>,
}

/// Whoever runs the MQTT protocol on accepted connections: the [`crate::Broker`], or a
/// stand-in in tests.
pub trait ConnectionHandler: Clone + Send + Sync + 'static {
    /// Runs one connection to completion. The future lives as long as the connection (it is
    /// most of an idle connection's memory), so keep it small: box rarely used state.
    fn handle<S>(&self, stream: S, conn: Accepted) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Called once after the listeners stopped accepting.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

impl ConnectionHandler for crate::Broker {
    // Not an `async fn`: the broker's connection future is returned as is, without a wrapper
    // keeping `stream` and `conn` alongside it for the connection's whole life.
    fn handle<S>(&self, stream: S, conn: Accepted) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = crate::ConnInfo {
            peer: conn.peer,
            transport: conn.transport,
            client_cert: conn.client_cert,
            preauthenticated: None,
        };
        self.serve_connection(stream, info)
    }

    async fn shutdown(&self) {
        crate::Broker::shutdown(self).await
    }
}

/// Serves `broker` on `listeners` until `shutdown` completes, with [`ServeOptions::default`]
/// (the broker enforces its own connection limit on top of the listeners' one).
pub async fn serve(
    broker: crate::Broker,
    listeners: Vec<BoundListener>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(broker, listeners, ServeOptions::default(), shutdown).await
}

/// Tuning for [`serve_with`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Connections (in handshake or established) across all listeners; more are closed
    /// right after accept.
    pub max_connections: usize,
    /// Deadline for the TLS and WebSocket handshakes.
    pub handshake_timeout: Duration,
    /// Largest WebSocket message accepted.
    pub max_ws_message_size: usize,
    /// After [`ConnectionHandler::shutdown`], how long to wait for connections to finish.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            max_ws_message_size: 16 << 20,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Accepts connections on every listener until `shutdown` completes, then stops
/// accepting, cancels handshakes in progress, and shuts the handler down.
pub async fn serve_with<H: ConnectionHandler>(
    handler: H,
    listeners: Vec<BoundListener>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let options = Arc::new(options);
    for listener in listeners {
        tracing::info!("listening on {}", listener.url);
        tracker.spawn(accept_loop(
            handler.clone(),
            listener,
            slots.clone(),
            options.clone(),
            stop.clone(),
            tracker.clone(),
        ));
    }
    shutdown.await;
    tracing::info!("shutting down: no longer accepting connections");
    stop.cancel();
    handler.shutdown().await;
    tracker.close();
    if tokio::time::timeout(options.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "{} connection task(s) still running after {:?}; leaving them",
            tracker.len(),
            options.drain_timeout
        );
    }
}

async fn accept_loop<H: ConnectionHandler>(
    handler: H,
    listener: BoundListener,
    slots: Arc<Semaphore>,
    options: Arc<ServeOptions>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let BoundListener { url, listener, tls } = listener;
    // Shared by this listener's connections: nothing listener-wide is copied per connection.
    let handshaker = Arc::new(Handshaker {
        scheme: url.scheme,
        path: url.path.clone(),
        tls,
        options: options.clone(),
    });
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(err) => {
                // Typically EMFILE/ENFILE: out of file descriptors. Pausing briefly lets
                // connections close instead of spinning on the error.
                tracing::error!("accept on {url} failed: {err}");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                "refusing connection from {peer} on {url}: {} connections is the limit",
                options.max_connections
            );
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        if url.scheme == Scheme::Mqtt {
            // The common case gets a task holding nothing but the handler's future: no
            // handshake state, no listener settings.
            let conn = Accepted {
                peer,
                transport: Transport::Tcp,
                client_cert: None,
            };
            let handler = handler.clone();
            tracker.spawn(async move {
                handler.handle(tcp, conn).await;
                drop(permit);
            });
        } else {
            tracker.spawn(handshake_then_handle(
                handler.clone(),
                tcp,
                peer,
                handshaker.clone(),
                stop.clone(),
                permit,
            ));
        }
    }
}

/// What a TLS or WebSocket listener needs to run its handshakes.
struct Handshaker {
    scheme: Scheme,
    path: String,
    tls: Option<ReloadableTls>,
    options: Arc<ServeOptions>,
}

enum Ready {
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        Option<ClientCert>,
    ),
    Ws(Box<crate::ws::WsStream<TcpStream>>),
    Wss(
        Box<crate::ws::WsStream<tokio_rustls::server::TlsStream<TcpStream>>>,
        Option<ClientCert>,
    ),
}

/// Runs the handshakes, then the handler. The handshake futures (rustls and tungstenite
/// state, several KB) are boxed and freed once done, so that an established connection's
/// task is no larger than a plain TCP one's.
async fn handshake_then_handle<H: ConnectionHandler>(
    handler: H,
    tcp: TcpStream,
    peer: SocketAddr,
    handshaker: Arc<Handshaker>,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let scheme = handshaker.scheme;
    let Some(ready) = Box::pin(handshaker.run(tcp, peer, stop)).await else {
        return;
    };
    let accepted = |client_cert| Accepted {
        peer,
        transport: scheme.transport(),
        client_cert,
    };
    match ready {
        Ready::Tls(s, cert) => handler.handle(s, accepted(cert)).await,
        Ready::Ws(s) => handler.handle(s, accepted(None)).await,
        Ready::Wss(s, cert) => handler.handle(s, accepted(cert)).await,
    }
    drop(permit);
}

impl Handshaker {
    /// The handshakes under the deadline; `None` (after logging why) if they failed or the
    /// listener is stopping.
    async fn run(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        stop: CancellationToken,
    ) -> Option<Ready> {
        let scheme = self.scheme;
        let ready = tokio::select! {
            () = stop.cancelled() => return None,
            ready = tokio::time::timeout(self.options.handshake_timeout, self.handshake(tcp)) => ready,
        };
        match ready {
            Ok(Ok(ready)) => Some(ready),
            Ok(Err(err)) => {
                // Info, not debug: a refused client certificate is otherwise invisible to
                // the operator. One line per failed attempt.
                tracing::info!("{} handshake with {peer} failed: {err}", scheme.as_str());
                None
            }
            Err(_) => {
                tracing::debug!("handshake with {peer} on {} timed out", scheme.as_str());
                None
            }
        }
    }

    async fn handshake(&self, tcp: TcpStream) -> io::Result<Ready> {
        let max_ws = self.options.max_ws_message_size;
        match (self.scheme, &self.tls) {
            (Scheme::Mqtt, _) => Err(io::Error::other(
                "plain MQTT listeners have no handshake (internal error)",
            )),
            (Scheme::Ws, _) => Ok(Ready::Ws(Box::new(
                crate::ws::accept(tcp, &self.path, max_ws).await?,
            ))),
            (Scheme::Mqtts | Scheme::Wss, None) => {
                Err(io::Error::other("TLS listener without TLS configuration"))
            }
            (Scheme::Mqtts, Some(tls)) => {
                let stream = tls.acceptor().accept(tcp).await?;
                let cert = crate::tls::peer_client_cert(stream.get_ref().1);
                Ok(Ready::Tls(Box::new(stream), cert))
            }
            (Scheme::Wss, Some(tls)) => {
                let stream = tls.acceptor().accept(tcp).await?;
                let cert = crate::tls::peer_client_cert(stream.get_ref().1);
                Ok(Ready::Wss(
                    Box::new(crate::ws::accept(stream, &self.path, max_ws).await?),
                    cert,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> ListenUrl {
        s.parse().unwrap()
    }

    #[test]
    fn parses_listen_urls() {
        let u = url("mqtt://127.0.0.1:1883");
        assert_eq!(
            (u.scheme, u.addr, u.path.as_str()),
            (Scheme::Mqtt, "127.0.0.1:1883".parse().unwrap(), "/")
        );
        assert!(u.is_loopback());
        assert_eq!(u.to_string(), "mqtt://127.0.0.1:1883");

        let u = url("mqtts://0.0.0.0:8883");
        assert!(u.scheme.is_tls() && !u.is_loopback());
        assert_eq!(url("mqtts://0.0.0.0").addr.port(), 8883);

        let u = url("ws://[::1]:0");
        assert_eq!((u.scheme, u.path.as_str()), (Scheme::Ws, "/mqtt"));
        assert!(u.is_loopback());
        assert_eq!(u.to_string(), "ws://[::1]:0/mqtt");

        let u = url("wss://localhost:9001/");
        assert_eq!(
            (u.addr, u.path.as_str()),
            ("127.0.0.1:9001".parse().unwrap(), "/")
        );
        assert_eq!(url("WS://127.0.0.1:80/custom/path").path, "/custom/path");
    }

    #[test]
    fn rejects_bad_listen_urls_saying_why() {
        for (bad, why) in [
            ("127.0.0.1:1883", "expected scheme://"),
            ("http://127.0.0.1:80", "scheme must be"),
            ("mqtt://example.com:1883", "must be an IP address"),
            ("mqtt://127.0.0.1:99999", "port must be"),
            ("mqtt://127.0.0.1:1883/x", "only ws://"),
            ("mqtt://::1:1883", "brackets"),
            ("mqtt://[::1", "unclosed"),
            ("ws://u:p@127.0.0.1:1/mqtt", "user info"),
            ("mqtt://", "missing host"),
        ] {
            let err = bad.parse::<ListenUrl>().unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn bind_reports_the_chosen_port_and_requires_tls_for_tls_urls() {
        let bound = BoundListener::bind(&url("mqtt://127.0.0.1:0"), None)
            .await
            .unwrap();
        assert_ne!(bound.local_addr().port(), 0);
        assert_eq!(
            bound.local_url().to_string(),
            format!("mqtt://127.0.0.1:{}", bound.local_addr().port())
        );

        let err = BoundListener::bind(&url("mqtts://127.0.0.1:0"), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        let err = BoundListener::bind(&url(&bound.local_url().to_string()), None)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot listen on mqtt://127.0.0.1:"),
            "{err}"
        );
    }

    /// Every connection's task lives as long as the connection: it must not carry the TLS
    /// and WebSocket handshake state (about 11 KB before they were boxed, which made each
    /// idle connection cost 13 KiB of RSS instead of 2).
    #[tokio::test]
    async fn connection_tasks_stay_small_whatever_the_listener() {
        const LIMIT: usize = 1536;
        let broker = crate::Broker::open(
            crate::BrokerConfig::default(),
            Arc::new(crate::password_file::AnonymousAuth),
        )
        .await
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let conn = Accepted {
            peer,
            transport: Transport::Tcp,
            client_cert: None,
        };
        let handler = broker.clone();
        let plain = async move {
            handler.handle(tcp, conn).await;
            drop(permit);
        };
        let plain_size = std::mem::size_of_val(&plain);
        assert!(plain_size <= LIMIT, "plain TCP task: {plain_size} bytes");
        drop(plain);

        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let handshaker = Arc::new(Handshaker {
            scheme: Scheme::Wss,
            path: DEFAULT_WS_PATH.into(),
            tls: None,
            options: Arc::new(ServeOptions::default()),
        });
        let stop = CancellationToken::new();
        let task = handshake_then_handle(broker, tcp, peer, handshaker, stop, permit);
        let task_size = std::mem::size_of_val(&task);
        assert!(task_size <= LIMIT, "TLS/WebSocket task: {task_size} bytes");
    }

    mod serving {
        use super::*;
        use crate::tls::tests::Pki;
        use futures_util::{SinkExt, StreamExt};
        use rustls::pki_types::ServerName;
        use std::{
            path::PathBuf,
            sync::atomic::{AtomicBool, Ordering},
        };
        use tokio::{
            io::{AsyncReadExt, AsyncWriteExt},
            sync::mpsc,
        };
        use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

        /// Echoes bytes back and reports each connection it was handed.
        #[derive(Clone)]
        struct Echo {
            seen: mpsc::UnboundedSender<Accepted>,
            shut: Arc<AtomicBool>,
        }

        impl ConnectionHandler for Echo {
            async fn handle<S>(&self, mut stream: S, conn: Accepted)
            where
                S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
            {
                let _ = self.seen.send(conn);
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
                        break;
                    }
                }
            }
            async fn shutdown(&self) {
                self.shut.store(true, Ordering::SeqCst);
            }
        }

        struct Running {
            urls: Vec<ListenUrl>,
            seen: mpsc::UnboundedReceiver<Accepted>,
            stop: Option<tokio::sync::oneshot::Sender<()>>,
            done: tokio::task::JoinHandle<()>,
            shut: Arc<AtomicBool>,
        }

        async fn start(
            specs: &[&str],
            tls: Option<ReloadableTls>,
            options: ServeOptions,
        ) -> Running {
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
            let (tx, seen) = mpsc::unbounded_channel();
            let shut = Arc::new(AtomicBool::new(false));
            let handler = Echo {
                seen: tx,
                shut: shut.clone(),
            };
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let done = tokio::spawn(serve_with(handler, listeners, options, async move {
                let _ = stopped.await;
            }));
            Running {
                urls,
                seen,
                stop: Some(stop),
                done,
                shut,
            }
        }

        fn client_tls(pki: &Pki, cert: Option<(PathBuf, PathBuf)>) -> tokio_rustls::TlsConnector {
            let mut roots = rustls::RootCertStore::empty();
            for ca in crate::tls::load_certs(&pki.dir.path().join("ca.pem")).unwrap() {
                roots.add(ca).unwrap();
            }
            let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
            let config = match cert {
                Some((cert, key)) => builder
                    .with_client_auth_cert(
                        crate::tls::load_certs(&cert).unwrap(),
                        crate::tls::load_key(&key).unwrap(),
                    )
                    .unwrap(),
                None => builder.with_no_client_auth(),
            };
            tokio_rustls::TlsConnector::from(Arc::new(config))
        }

        async fn echo_once<S: AsyncRead + AsyncWrite + Unpin>(
            stream: &mut S,
            data: &[u8],
        ) -> io::Result<Vec<u8>> {
            stream.write_all(data).await?;
            stream.flush().await?;
            let mut got = vec![0u8; data.len()];
            stream.read_exact(&mut got).await?;
            Ok(got)
        }

        const WAIT: Duration = Duration::from_secs(10);

        #[tokio::test]
        async fn all_four_schemes_reach_the_handler_with_the_right_transport_and_identity() {
            let pki = Pki::new();
            let (cert, key) = pki.issue("broker", "server");
            let device = pki.issue("kitchen", "device");
            let tls = ReloadableTls::load(pki.settings(cert, key)).unwrap();
            let mut run = start(
                &[
                    "mqtt://127.0.0.1:0",
                    "ws://127.0.0.1:0",
                    "mqtts://127.0.0.1:0",
                    "wss://127.0.0.1:0/custom",
                ],
                Some(tls),
                ServeOptions::default(),
            )
            .await;
            let addr = |i: usize| run.urls[i].addr;

            let mut plain = TcpStream::connect(addr(0)).await.unwrap();
            assert_eq!(echo_once(&mut plain, b"plain").await.unwrap(), b"plain");
            let seen = run.seen.recv().await.unwrap();
            assert_eq!(
                (seen.transport, seen.client_cert.is_none()),
                (Transport::Tcp, true)
            );
            assert_eq!(seen.peer, plain.local_addr().unwrap());

            let request = format!("ws://{}/mqtt", addr(1))
                .into_client_request()
                .unwrap();
            let (mut ws, _) = tokio_tungstenite::client_async(
                request,
                TcpStream::connect(addr(1)).await.unwrap(),
            )
            .await
            .unwrap();
            ws.send(Message::binary(b"ws".to_vec())).await.unwrap();
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::binary(b"ws".to_vec())
            );
            assert_eq!(run.seen.recv().await.unwrap().transport, Transport::Ws);

            let name = ServerName::try_from("localhost").unwrap();
            let tcp = TcpStream::connect(addr(2)).await.unwrap();
            let mut mtls = client_tls(&pki, Some(device.clone()))
                .connect(name.clone(), tcp)
                .await
                .unwrap();
            assert_eq!(echo_once(&mut mtls, b"tls").await.unwrap(), b"tls");
            let seen = run.seen.recv().await.unwrap();
            assert_eq!(seen.transport, Transport::Tls);
            assert_eq!(
                seen.client_cert.unwrap().common_name.as_deref(),
                Some("kitchen")
            );

            // Without a client certificate the TLS listener refuses (the certificate is
            // required), and the handler never sees the connection.
            let tcp = TcpStream::connect(addr(2)).await.unwrap();
            let refused = async {
                let mut tls = client_tls(&pki, None).connect(name.clone(), tcp).await?;
                echo_once(&mut tls, b"x").await
            };
            assert!(tokio::time::timeout(WAIT, refused).await.unwrap().is_err());

            let tcp = TcpStream::connect(addr(3)).await.unwrap();
            let tls = client_tls(&pki, Some(device))
                .connect(name, tcp)
                .await
                .unwrap();
            let request = format!("wss://localhost:{}/custom", addr(3).port())
                .into_client_request()
                .unwrap();
            let (mut wss, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
            wss.send(Message::binary(b"wss".to_vec())).await.unwrap();
            assert_eq!(
                wss.next().await.unwrap().unwrap(),
                Message::binary(b"wss".to_vec())
            );
            let seen = run.seen.recv().await.unwrap();
            assert_eq!(seen.transport, Transport::Wss);
            assert_eq!(
                seen.client_cert.unwrap().common_name.as_deref(),
                Some("kitchen")
            );
            assert!(
                run.seen.try_recv().is_err(),
                "the refused TLS client must not reach the handler"
            );
            // The echo handler ignores shutdown; close our ends so the drain finishes at once.
            drop((plain, ws, mtls, wss));

            run.stop.take().unwrap().send(()).unwrap();
            tokio::time::timeout(WAIT, run.done).await.unwrap().unwrap();
            assert!(run.shut.load(Ordering::SeqCst));
            assert!(
                TcpStream::connect(addr(0)).await.is_err(),
                "no longer listening after shutdown"
            );
        }

        #[tokio::test]
        async fn connections_over_the_limit_are_closed_and_slots_are_freed() {
            let options = ServeOptions {
                max_connections: 1,
                ..ServeOptions::default()
            };
            let mut run = start(&["mqtt://127.0.0.1:0"], None, options).await;
            let addr = run.urls[0].addr;
            let mut first = TcpStream::connect(addr).await.unwrap();
            assert_eq!(echo_once(&mut first, b"1").await.unwrap(), b"1");
            run.seen.recv().await.unwrap();

            let mut second = TcpStream::connect(addr).await.unwrap();
            let mut buf = [0u8; 1];
            let closed = tokio::time::timeout(WAIT, second.read(&mut buf))
                .await
                .unwrap();
            assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

            drop(first);
            // The slot frees once the first connection's task ends; retry until it has.
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let mut third = TcpStream::connect(addr).await.unwrap();
                if let Ok(echoed) = echo_once(&mut third, b"3").await {
                    assert_eq!(echoed, b"3");
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot was never freed"
                );
                tokio::task::yield_now().await;
            }
        }

        #[tokio::test]
        async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
            let pki = Pki::new();
            let (cert, key) = pki.issue("broker", "server");
            let tls = ReloadableTls::load(pki.settings(cert, key)).unwrap();
            let options = ServeOptions {
                handshake_timeout: Duration::from_millis(200),
                ..ServeOptions::default()
            };
            let mut run = start(
                &["mqtts://127.0.0.1:0", "ws://127.0.0.1:0"],
                Some(tls),
                options,
            )
            .await;
            for url in run.urls.clone() {
                let mut silent = TcpStream::connect(url.addr).await.unwrap();
                let started = std::time::Instant::now();
                let mut buf = [0u8; 16];
                let closed = tokio::time::timeout(WAIT, silent.read(&mut buf))
                    .await
                    .unwrap();
                assert!(matches!(closed, Ok(0) | Err(_)), "{url}: {closed:?}");
                assert!(
                    started.elapsed() >= Duration::from_millis(150),
                    "{url}: closed before the deadline"
                );
            }
            assert!(run.seen.try_recv().is_err());
        }
    }
}
