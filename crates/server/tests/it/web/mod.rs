//! The web tier over real HTTPS: API, auth, commands, live streams, MQTT over WebSocket,
//! telemetry, enrollment, user apps, OpenAPI. Shared helpers live here.

mod apps;
mod auth;
mod commands;
mod enroll;
mod hardening;
mod live;
mod mqtt_ws;
mod openapi;
mod telemetry;

use std::{sync::Arc, time::Duration};

use broker::Message;
use codec::QoS;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use server::RunningServer;
use store::Role;
use tempfile::TempDir;

use crate::harness;

pub struct Web {
    pub server: RunningServer,
    pub dir: TempDir,
    pub base: String,
    pub http: reqwest::Client,
    /// An admin bearer token.
    pub admin: String,
}

impl Web {
    pub async fn start() -> Web {
        Web::start_with(|_| {}).await
    }

    /// A server whose configuration `adjust` changed first.
    pub async fn start_with(adjust: impl FnOnce(&mut server::config::ServerConfig)) -> Web {
        let dir = tempfile::tempdir().unwrap();
        let mut options = harness::test_options(dir.path());
        adjust(&mut options.config);
        harness::install_crypto();
        let server = server::Server::start(options).await.expect("server starts");
        let addr = server.https_addr().expect("an https listener");
        let ca = reqwest::Certificate::from_pem(server.ctx.ca.cert_pem().as_bytes()).unwrap();
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(ca)
            .resolve("localhost", addr)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut web = Web {
            base: format!("https://localhost:{}", addr.port()),
            server,
            dir,
            http,
            admin: String::new(),
        };
        web.admin = web.token("root", Role::Admin).await;
        web
    }

    /// Creates an API token with `role` and returns its secret.
    pub async fn token(&self, name: &str, role: Role) -> String {
        let token = store::secret::generate_api_token();
        self.server
            .ctx
            .store
            .tokens()
            .create(name, role, &store::secret::hash_token(&token))
            .await
            .unwrap();
        token
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with a bearer token.
    pub fn req(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(token)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        json_of(self.req(Method::GET, path, token).send().await.unwrap()).await
    }

    /// Logs in; returns (cookie header value, csrf token).
    pub async fn login(&self, user: &str, password: &str) -> (String, String) {
        let response = self
            .http
            .post(self.url("/api/v1/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "login as {user}");
        let cookie = response
            .headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let body: Value = response.json().await.unwrap();
        let pair = cookie.split(';').next().unwrap().to_string();
        (pair, body["csrf_token"].as_str().unwrap().to_string())
    }

    /// Waits until the twin reports `device` with `online`.
    pub async fn wait_online(&self, device: &str, online: bool) {
        let ok = harness::eventually(harness::WAIT, async || {
            let (status, body) = self
                .get(&format!("/api/v1/devices/{device}"), &self.admin)
                .await;
            status == StatusCode::OK && body["online"] == json!(online)
        })
        .await;
        assert!(ok, "device {device} did not become online={online}");
    }
}

pub async fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// How a fake device answers commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Applies the value and reports it on `state/{name}` with the command id.
    Confirm,
    /// Never answers.
    Silent,
    /// Acknowledges with `ok: false`.
    Refuse,
}

/// A device simulated with an in-process broker client: registered, online, with an output
/// `led` (bool) and a sensor `temp`, answering commands as told.
pub struct FakeDevice {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn fake_device(web: &Web, id: &str, answer: Answer) -> FakeDevice {
    harness::add_token_device(&web.server, id).await;
    let client = web.server.ctx.broker.local_client(&format!("device:{id}"));
    let mut commands = client.subscribe(&format!("devices/{id}/set/+"));
    let meta = json!({"agent": "fake/0", "outputs": [{"name": "led", "type": "bool"}], "inputs": [],
        "sensors": [{"name": "temp", "unit": "°C", "interval_ms": 1000}]});
    client.publish(retained(&format!("devices/{id}/meta"), meta.to_string()));
    client.publish(retained(
        &format!("devices/{id}/status"),
        "online".to_string(),
    ));
    let device = id.to_string();
    let task = tokio::spawn(async move {
        while let Some(message) = commands.recv().await {
            let name = message.topic.rsplit('/').next().unwrap().to_string();
            let command: Value = serde_json::from_slice(&message.payload).unwrap();
            let cmd = command["id"].as_str().unwrap_or_default().to_string();
            match answer {
                Answer::Silent => {}
                Answer::Confirm => {
                    let state =
                        json!({"value": command["value"], "ts": store::now_ms(), "cmd": cmd});
                    client.publish(retained(
                        &format!("devices/{device}/state/{name}"),
                        state.to_string(),
                    ));
                    let ack =
                        json!({"id": cmd, "name": name, "ok": true, "value": command["value"]});
                    client.publish(
                        Message::new(format!("devices/{device}/ack"), ack.to_string())
                            .with_qos(QoS::AtLeastOnce),
                    );
                }
                Answer::Refuse => {
                    let ack =
                        json!({"id": cmd, "name": name, "ok": false, "error": "the LED is broken"});
                    client.publish(
                        Message::new(format!("devices/{device}/ack"), ack.to_string())
                            .with_qos(QoS::AtLeastOnce),
                    );
                }
            }
        }
    });
    web.wait_online(id, true).await;
    // The meta message may trail the status one.
    let ok = harness::eventually(harness::WAIT, async || {
        let (_, body) = web.get(&format!("/api/v1/devices/{id}"), &web.admin).await;
        body["capabilities"]["outputs"][0]["name"] == json!("led")
    })
    .await;
    assert!(ok, "the fake device's meta did not arrive");
    FakeDevice { task }
}

pub fn retained(topic: &str, payload: String) -> Message {
    Message::new(topic.to_string(), payload)
        .with_qos(QoS::AtLeastOnce)
        .with_retain(true)
}

/// A TLS connection to the web port, for WebSocket clients.
pub async fn tls_stream(web: &Web) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = harness::tls_client_config(&harness::ca_file(&web.server), None);
    let tcp = tokio::net::TcpStream::connect(web.server.https_addr().unwrap())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::clone(&config))
        .connect(name, tcp)
        .await
        .unwrap()
}
