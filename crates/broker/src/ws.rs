//! MQTT over WebSocket: the HTTP upgrade (subprotocol `mqtt`) and an adapter that turns a
//! WebSocket's binary messages back into the byte stream the MQTT codec reads.
//!
//! MQTT packets and WebSocket messages are independent: one message may carry several
//! packets or part of one, so the adapter is a plain byte stream in both directions.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::server::{ErrorResponse, Request, Response},
        http::{HeaderValue, StatusCode},
        protocol::WebSocketConfig,
    },
};

/// Subprotocols we speak, in order of preference: `mqtt` (MQTT 3.1.1 and 5) and the
/// `mqttv3.1` name that MQTT 3.1 clients send.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Performs the server side of the WebSocket upgrade on `stream`. Requests for a path other
/// than `path` or `/` get a 404; the `mqtt` subprotocol is echoed when offered.
// The callback's error type is dictated by tungstenite.
#[allow(clippy::result_large_err)]
pub async fn accept<S>(
    stream: S,
    path: &str,
    max_message_size: usize,
) -> Result<WsStream<S>, io::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let path = path.to_owned();
    let callback =
        move |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
            let requested = request.uri().path();
            if requested != path && requested != "/" {
                let mut refusal = ErrorResponse::new(Some(format!(
                    "no MQTT endpoint at {requested}; use {path}\n"
                )));
                *refusal.status_mut() = StatusCode::NOT_FOUND;
                return Err(refusal);
            }
            let offered = request
                .headers()
                .get_all("sec-websocket-protocol")
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .map(str::trim)
                .collect::<Vec<_>>();
            if let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) {
                response
                    .headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
            } else if !offered.is_empty() {
                let mut refusal = ErrorResponse::new(Some(format!(
                    "unsupported WebSocket subprotocol(s) {offered:?}; offer \"mqtt\"\n"
                )));
                *refusal.status_mut() = StatusCode::BAD_REQUEST;
                return Err(refusal);
            }
            // No subprotocol offered at all: MQTT requires one, but being lenient costs nothing.
            Ok(response)
        };
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
        .map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("WebSocket handshake failed: {err}"),
            )
        })?;
    Ok(WsStream::new(ws))
}

/// A WebSocket connection seen as a byte stream: reads yield the payloads of binary
/// messages, each write is sent as one binary message.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    pending: Bytes,
    closed: bool,
}

impl<S> WsStream<S> {
    pub fn new(inner: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            inner,
            pending: Bytes::new(),
            closed: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }
}

fn to_io(err: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error;
    match err {
        Error::Io(err) => err,
        Error::ConnectionClosed | Error::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                // Pings are answered by tungstenite itself; pongs and raw frames carry no data.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket must use binary messages, got a text message",
                    )));
                }
                Some(Ok(Message::Close(_))) | None => self.closed = true,
                Some(Err(err)) => return Poll::Ready(Err(to_io(err))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.inner).poll_close(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            // The peer closing first is a normal end.
            Err(
                tokio_tungstenite::tungstenite::Error::ConnectionClosed
                | tokio_tungstenite::tungstenite::Error::AlreadyClosed,
            ) => Poll::Ready(Ok(())),
            Err(err) => Poll::Ready(Err(to_io(err))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    async fn pair(
        path: &str,
        protocol: Option<&str>,
    ) -> (
        Result<WsStream<tokio::io::DuplexStream>, io::Error>,
        Result<WebSocketStream<tokio::io::DuplexStream>, String>,
    ) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let mut request = format!("ws://localhost{path}")
            .into_client_request()
            .unwrap();
        if let Some(protocol) = protocol {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(protocol).unwrap(),
            );
        }
        let (server, client) = tokio::join!(
            accept(server, "/mqtt", 1 << 20),
            tokio_tungstenite::client_async(request, client)
        );
        let client = client.map(|(ws, response)| {
            assert_eq!(
                response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().unwrap().to_owned()),
                protocol.map(|_| "mqtt".to_owned())
            );
            ws
        });
        (server, client.map_err(|e| e.to_string()))
    }

    #[tokio::test]
    async fn bytes_cross_message_boundaries_both_ways() {
        let (server, client) = pair("/mqtt", Some("mqtt")).await;
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        // One packet split over two messages, then two packets in one message.
        client
            .send(Message::binary(vec![0x10, 0x02]))
            .await
            .unwrap();
        client
            .send(Message::binary(vec![0x00, 0x01, 0xc0, 0x00]))
            .await
            .unwrap();
        let mut got = [0u8; 6];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x10, 0x02, 0x00, 0x01, 0xc0, 0x00]);

        server.write_all(&[0xd0, 0x00]).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::binary(vec![0xd0, 0x00])
        );

        client.send(Message::text("hello")).await.unwrap();
        let err = server.read_u8().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn close_is_end_of_stream() {
        let (server, client) = pair("/", Some("mqttv3.1, mqtt")).await;
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        client.close(None).await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn wrong_path_and_wrong_protocol_are_refused() {
        let (server, client) = pair("/other", Some("mqtt")).await;
        assert!(server.is_err());
        assert!(client.unwrap_err().contains("404"));
        let (server, client) = pair("/mqtt", Some("chat")).await;
        assert!(server.is_err());
        assert!(client.unwrap_err().contains("400"));
    }
}
