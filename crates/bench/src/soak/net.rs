//! Connections from chosen loopback source addresses, so that each kind of client looks like
//! its own population: attackers from many addresses, devices spread the way NAT spreads them.
//! The server sees every client on 127.0.0.0/8, which Linux routes to `lo` without setup.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// A block of loopback addresses: `base`, `base + 1`, ... `base + size - 1`.
#[derive(Debug)]
pub struct AddrPool {
    base: u32,
    size: u32,
    next: AtomicU32,
}

impl AddrPool {
    pub const fn new(base: Ipv4Addr, size: u32) -> AddrPool {
        AddrPool {
            base: base.to_bits(),
            size,
            next: AtomicU32::new(0),
        }
    }

    /// The `i`-th address, wrapping around.
    pub fn nth(&self, i: usize) -> Ipv4Addr {
        let offset = (i % self.size.max(1) as usize) as u32;
        Ipv4Addr::from_bits(self.base + offset)
    }

    /// The next address in turn (attackers rotate through the pool).
    pub fn next(&self) -> Ipv4Addr {
        self.nth(self.next.fetch_add(1, Ordering::Relaxed) as usize)
    }
}

/// Legitimate devices: 50 per address, as behind a carrier NAT.
pub const DEVICES_PER_ADDRESS: usize = 50;
pub static DEVICE_ADDRS: AddrPool = AddrPool::new(Ipv4Addr::new(127, 10, 0, 0), 65_536);
/// Login floods rotate through 4,096 addresses (a small botnet).
pub static FLOOD_ADDRS: AddrPool = AddrPool::new(Ipv4Addr::new(127, 64, 0, 0), 4_096);
/// Slowloris connections rotate through 1,024 addresses.
pub static SLOW_ADDRS: AddrPool = AddrPool::new(Ipv4Addr::new(127, 128, 0, 0), 1_024);
/// The abusive devices (deep filters, retained flood), one address each.
pub static ABUSER_ADDRS: AddrPool = AddrPool::new(Ipv4Addr::new(127, 200, 0, 1), 256);

/// A TCP connection to `to` from `from` (any free port).
pub async fn tcp_from(from: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(from, 0)))?;
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TCP from `from`, then a TLS handshake verified against the server's CA (the server's
/// certificate carries 127.0.0.1), all within `within`.
pub async fn tls_from(
    from: Ipv4Addr,
    to: SocketAddr,
    tls: &TlsConnector,
    within: Duration,
) -> io::Result<TlsStream<TcpStream>> {
    tokio::time::timeout(within, async {
        let tcp = tcp_from(from, to).await?;
        tls.connect(ServerName::IpAddress(to.ip().into()), tcp)
            .await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect + TLS handshake"))?
}

/// The TLS connector every client of the soak uses: trusts the server's CA, no client
/// certificate.
pub fn tls_connector(ca_pem: &str) -> anyhow::Result<(TlsConnector, Arc<rustls::ClientConfig>)> {
    let config = Arc::new(client::tls_config(ca_pem, None)?);
    Ok((TlsConnector::from(config.clone()), config))
}

/// The bytes of a genuine TLS ClientHello for `config`, as a client would send first.
pub fn client_hello(config: &Arc<rustls::ClientConfig>) -> anyhow::Result<Vec<u8>> {
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut conn = rustls::ClientConnection::new(config.clone(), name)?;
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello)?;
    }
    Ok(hello)
}

/// One HTTP/1.1 request on its own TLS connection from `from`; returns the status code.
/// Used by the login flood, where every attempt comes from the next address of a botnet.
pub async fn https_once(
    from: Ipv4Addr,
    to: SocketAddr,
    tls: &TlsConnector,
    method: &str,
    path: &str,
    body: &str,
    within: Duration,
) -> io::Result<u16> {
    let deadline = tokio::time::Instant::now() + within;
    let mut stream = tls_from(from, to, tls, within).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let status = tokio::time::timeout_at(deadline, async {
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        // The status line is all we need; it fits in the first read or two.
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        parse_status_line(&head).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no HTTP status line before the connection closed",
            )
        })
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "waiting for the HTTP answer"))??;
    let _ = stream.shutdown().await;
    Ok(status)
}

/// "HTTP/1.1 429 Too Many Requests\r\n..." -> 429.
pub fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// A short label for an I/O error, for tallies ("timeout", "reset", "refused", ...).
pub fn io_label(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::TimedOut => "timeout",
        io::ErrorKind::ConnectionReset => "connection reset",
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::UnexpectedEof => "closed without an answer",
        io::ErrorKind::BrokenPipe => "broken pipe",
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse => "no free source port",
        _ if err.raw_os_error() == Some(24) => "client out of file descriptors",
        _ => "other I/O error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_rotate_within_their_block() {
        let pool = AddrPool::new(Ipv4Addr::new(127, 64, 0, 0), 3);
        let seen: Vec<Ipv4Addr> = (0..4).map(|_| pool.next()).collect();
        assert_eq!(
            seen,
            [
                Ipv4Addr::new(127, 64, 0, 0),
                Ipv4Addr::new(127, 64, 0, 1),
                Ipv4Addr::new(127, 64, 0, 2),
                Ipv4Addr::new(127, 64, 0, 0),
            ]
        );
        assert_eq!(DEVICE_ADDRS.nth(256), Ipv4Addr::new(127, 10, 1, 0));
    }

    #[test]
    fn status_lines_parse_and_garbage_does_not() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n"),
            Some(429)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"SSH-2.0-x\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[tokio::test]
    async fn connections_come_from_the_chosen_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let from = Ipv4Addr::new(127, 200, 0, 7);
        let (_client, accepted) = tokio::join!(tcp_from(from, to), listener.accept());
        assert_eq!(accepted.unwrap().1.ip(), std::net::IpAddr::V4(from));
    }
}
