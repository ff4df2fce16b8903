//! The server's HTTP API as the soak uses it: an admin API token obtained with the first-start
//! password, device creation, commands, stored telemetry and `/metrics`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The name of the API token the soak creates (also its MQTT user name).
pub const TOKEN_NAME: &str = "soak";

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    /// Admin bearer token; also the MQTT password of user `soak`.
    pub token: String,
}

impl Api {
    /// Logs in as `admin` once and creates an admin API token, used for everything after.
    pub async fn connect(
        https: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        admin_password: &str,
    ) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .pool_max_idle_per_host(512)
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = format!("https://{https}");
        let login = http
            .post(format!("{base}/api/v1/login"))
            .json(&json!({ "username": "admin", "password": admin_password }))
            .send()
            .await
            .context("POST /api/v1/login")?;
        if !login.status().is_success() {
            bail!(
                "logging in as admin failed: {} {}",
                login.status(),
                login.text().await.unwrap_or_default()
            );
        }
        let cookie = login
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.split(';').next().filter(|c| c.starts_with("dc_session=")))
            .map(str::to_string)
            .context("the login answer set no dc_session cookie")?;
        let session: Value = login.json().await?;
        let csrf = session["csrf_token"]
            .as_str()
            .context("the login answer has no csrf_token")?
            .to_string();
        let created = http
            .post(format!("{base}/api/v1/tokens"))
            .header(reqwest::header::COOKIE, cookie)
            .header("x-csrf-token", csrf)
            .json(&json!({ "name": TOKEN_NAME, "role": "admin" }))
            .send()
            .await
            .context("POST /api/v1/tokens")?;
        if created.status() != reqwest::StatusCode::CREATED {
            bail!(
                "creating the API token failed: {} {}",
                created.status(),
                created.text().await.unwrap_or_default()
            );
        }
        let body: Value = created.json().await?;
        let token = body["token"]
            .as_str()
            .context("the token answer has no token")?
            .to_string();
        Ok(Api { http, base, token })
    }

    /// Registers a device with a token credential; returns the device's MQTT password.
    pub async fn add_device(&self, id: &str) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{}/api/v1/devices", self.base))
            .bearer_auth(&self.token)
            .json(&json!({ "id": id, "credential": "token" }))
            .send()
            .await
            .with_context(|| format!("POST /api/v1/devices ({id})"))?;
        if response.status() != reqwest::StatusCode::CREATED {
            bail!(
                "adding device {id} failed: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        let body: Value = response.json().await?;
        let bundle = proto::bundle::Bundle::parse(
            body["bundle"].as_str().context("no bundle in the answer")?,
            "POST /api/v1/devices",
        )?;
        match bundle.credentials {
            proto::bundle::Credentials::Token { token } => Ok(token),
            other => bail!("device {id} got a {} credential, not a token", other.kind()),
        }
    }

    /// `PUT /api/v1/devices/{id}/properties/{name}` and wait for the device's confirmation:
    /// the HTTP status (200 = confirmed), or the transport error.
    pub async fn put_property(&self, id: &str, name: &str, value: bool) -> Result<u16, String> {
        self.http
            .put(format!(
                "{}/api/v1/devices/{id}/properties/{name}",
                self.base
            ))
            .bearer_auth(&self.token)
            .body(value.to_string())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| {
                if e.is_timeout() {
                    "timeout".to_string()
                } else if e.is_connect() {
                    "cannot connect".to_string()
                } else {
                    "transport error".to_string()
                }
            })
    }

    /// How many readings of `sensor` the server stored for device `id` between `from` and
    /// `to` (ms since the epoch), summed over the buckets of one query.
    pub async fn stored_readings(
        &self,
        id: &str,
        sensor: &str,
        from: i64,
        to: i64,
    ) -> anyhow::Result<u64> {
        let response = self
            .http
            .get(format!(
                "{}/api/v1/devices/{id}/telemetry/{sensor}?from={from}&to={to}&points=10000",
                self.base
            ))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "telemetry of {id}: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        let body: Value = response.json().await?;
        Ok(body["points"]
            .as_array()
            .context("no points in the telemetry answer")?
            .iter()
            .filter_map(|p| p["count"].as_u64())
            .sum())
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("GET /metrics: {}", response.status());
        }
        Ok(response.text().await?)
    }
}

/// The metrics that say how abuse was answered: non-zero counters whose names speak of
/// refusals, limits, drops or failures (whatever the server version under test has).
pub fn defence_metrics(text: &str) -> Vec<(String, u64)> {
    const WORDS: [&str; 12] = [
        "refused", "banned", "busy", "limit", "dropped", "fail", "reject", "timeout", "denied",
        "throttl", "exceed", "closed",
    ];
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            (value > 0.0 && WORDS.iter().any(|w| name.contains(w)))
                .then(|| (name.to_string(), value as u64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defence_metrics_keep_only_nonzero_refusal_counters() {
        let text = "# HELP devicecloud_mqtt_connections_refused_total x\n\
                    devicecloud_mqtt_connections_refused_total 42\n\
                    devicecloud_mqtt_messages_dropped_total 0\n\
                    devicecloud_mqtt_messages_received_total 1000\n\
                    devicecloud_web_logins_failed_total 7\n";
        assert_eq!(
            defence_metrics(text),
            vec![
                ("devicecloud_mqtt_connections_refused_total".to_string(), 42),
                ("devicecloud_web_logins_failed_total".to_string(), 7),
            ]
        );
    }
}
