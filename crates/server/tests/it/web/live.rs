//! The live stream over WebSocket and server-sent events: presence and state arrive.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use store::Role;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

use super::{Answer, Web, fake_device, tls_stream};
use crate::harness::WAIT;

async fn next_json<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    want: impl Fn(&Value) -> bool,
) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a live message in time")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            if want(&value) {
                return value;
            }
        }
    }
}

#[tokio::test]
async fn the_websocket_delivers_presence_and_state() {
    let web = Web::start().await;
    let viewer = web.token("watcher", Role::Viewer).await;
    let mut request = "wss://localhost/api/v1/live?device=lamp"
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {viewer}")).unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::client_async(request, tls_stream(&web).await)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);

    let _device = fake_device(&web, "lamp", Answer::Confirm).await;
    let presence = next_json(&mut ws, |v| v["type"] == "presence").await;
    assert_eq!(
        (presence["device"].clone(), presence["online"].clone()),
        (json!("lamp"), json!(true))
    );
    assert!(presence["ts"].as_i64().unwrap() > 0);

    let status = web
        .req(
            reqwest::Method::PUT,
            "/api/v1/devices/lamp/properties/led",
            &web.admin,
        )
        .json(&json!(true))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    let state = next_json(&mut ws, |v| v["type"] == "state").await;
    assert_eq!(
        (state["name"].clone(), state["value"].clone()),
        (json!("led"), json!(true))
    );
    assert!(state["cmd"].is_string(), "{state}");
    let command = next_json(&mut ws, |v| v["type"] == "command").await;
    assert_eq!(command["status"], "confirmed");
    // The filter holds: another device's changes are not sent.
    let _other = fake_device(&web, "other", Answer::Confirm).await;
    let client = web.server.ctx.broker.local_client("device:lamp");
    client.publish(super::retained("devices/lamp/status", "offline".into()));
    let presence = next_json(&mut ws, |v| v["type"] == "presence").await;
    assert_eq!(
        (presence["device"].clone(), presence["online"].clone()),
        (json!("lamp"), json!(false))
    );
}

#[tokio::test]
async fn the_websocket_refuses_strangers() {
    let web = Web::start().await;
    let request = "wss://localhost/api/v1/live".into_client_request().unwrap();
    let err = tokio_tungstenite::client_async(request, tls_stream(&web).await)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test]
async fn server_sent_events_deliver_presence_and_telemetry() {
    let web = Web::start().await;
    let response = web
        .req(reqwest::Method::GET, "/api/v1/events", &web.admin)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut response = response;
    let _device = fake_device(&web, "probe", Answer::Confirm).await;
    let client = web.server.ctx.broker.local_client("device:probe");
    client.publish(broker::Message::new(
        "devices/probe/telemetry/temp",
        json!({"id": 1, "ts": 1_700_000_000_000i64, "value": 21.5}).to_string(),
    ));
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(text.contains(r#""type":"presence""#) && text.contains(r#""type":"telemetry""#)) {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no presence and telemetry events in time; got {text}"))
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let telemetry: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["type"] == "telemetry")
        .unwrap();
    assert_eq!(
        telemetry,
        json!({"type": "telemetry", "device": "probe", "sensor": "temp", "ts": 1_700_000_000_000i64, "value": 21.5})
    );
}
