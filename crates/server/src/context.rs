//! [`ServerContext`]: everything a server component needs, in one cheap clone.

use std::{path::PathBuf, sync::Arc};

use crate::{bus::Bus, config::ServerConfig, registry::Registry, twin::Twin};

#[derive(Clone)]
pub struct ServerContext {
    pub store: store::Store,
    pub broker: broker::Broker,
    /// How server components publish and subscribe (never the broker directly).
    pub bus: Arc<dyn Bus>,
    pub ca: Arc<pki::Ca>,
    pub config: Arc<ServerConfig>,
    pub data_dir: PathBuf,
    pub twin: Twin,
    /// Telemetry ingest (its counters go to `/metrics`).
    pub ingest: crate::ingest::Ingest,
    /// What the embedded bus dropped (a device over its share), for `/metrics`.
    pub bus_counters: Arc<crate::bus::BusCounters>,
    /// The broker's authenticator; the web tier uses it for MQTT over WebSocket and backoff.
    pub registry: Arc<Registry>,
    /// Public broker URLs for device bundles (first reachable wins), e.g. `mqtts://host:8883`.
    pub broker_urls: Arc<Vec<String>>,
    /// Public URL of the web tier (for bundles and enrollment lines), e.g. `https://host:8443`.
    pub api_url: Option<Arc<str>>,
}

impl std::fmt::Debug for ServerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerContext")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}
