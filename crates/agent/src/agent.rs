//! The running agent: wires the lines, sensors, outbox, services, status file and the broker
//! link together. Data flows one way: lines and sensors produce into the outbox and the state
//! channel; the link sends them; commands come back through the link into [`Outputs`].

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use proto::{bundle::Bundle, payload::StateReport};
use serde_json::Value;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::{
    commands::Outputs,
    config::{AgentConfig, GpioBackend},
    fsutil::now_ms,
    gpio::{Gpio, GpioError, linux::LinuxGpio, sim::SimGpio},
    link::Link,
    outbox::{Item, Outbox, OutboxError},
    sensors::Sensor,
    status::{AgentStatus, LinkState, OutboxStatus},
    supervisor::{ServiceStatus, Supervisor, service_env},
};

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Gpio(#[from] GpioError),
    #[error("cannot write the service credentials to {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the simulated GPIO control socket {path}: {source}")]
    SimSocket {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Builds the GPIO backend a config asks for.
pub fn gpio_for(config: &AgentConfig) -> Arc<dyn Gpio> {
    match config.gpio.backend {
        GpioBackend::Linux => Arc::new(LinuxGpio::new(config.gpio.default_chip.clone())),
        GpioBackend::Simulated => Arc::new(SimGpio::in_data_dir(&config.data_dir)),
    }
}

/// The agent.
pub struct Agent;

impl Agent {
    /// Starts the agent and returns once every line is held and every service started (the
    /// broker may still be unreachable: the agent keeps trying and queues meanwhile).
    /// It runs until `shutdown` resolves or [`AgentHandle::stop`] is called.
    pub async fn start(
        config: AgentConfig,
        bundle: Bundle,
        gpio: Arc<dyn Gpio>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<AgentHandle, AgentError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| AgentError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let meta = Arc::new(Outputs::meta_for(&config));
        let outbox = Outbox::open(&data_dir.join("outbox.db"), &config.outbox).await?;
        let outputs = Arc::new(Mutex::new(Outputs::open(
            &config.outputs,
            &*gpio,
            meta.clone(),
            &data_dir,
        )?));
        let mut inputs = Vec::new();
        for input in &config.inputs {
            inputs.push((input.name.clone(), gpio.request_input(input)?));
        }
        let sim = gpio.sim();
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        if let Some(sim) = &sim {
            let path = data_dir.join(crate::gpio::sim::SOCKET_FILE);
            let listener =
                SimGpio::bind_control(&path).map_err(|source| AgentError::SimSocket {
                    path: path.clone(),
                    source,
                })?;
            let sim = sim.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(err) = sim.serve_control(listener).await {
                    tracing::warn!(%err, "the simulated GPIO control socket stopped");
                }
            }));
        }
        let env = if config.services.is_empty() {
            Vec::new()
        } else {
            let dir = data_dir.join("credentials");
            service_env(&bundle, &dir)
                .map_err(|source| AgentError::Credentials { path: dir, source })?
        };
        let log_dir = data_dir.join("logs");
        if !config.services.is_empty() {
            std::fs::create_dir_all(&log_dir).map_err(|source| AgentError::DataDir {
                path: log_dir.clone(),
                source,
            })?;
        }
        let supervisor = Supervisor::start(&config.services, env, &log_dir);

        let (stop, stop_rx) = watch::channel(false);
        {
            let stop = stop.clone();
            let mut stopped = stop_rx.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown => { let _ = stop.send(true); }
                    _ = crate::fsutil::stopped(&mut stopped) => {}
                }
            });
        }

        let (state_tx, state_rx) = mpsc::unbounded_channel();
        let input_states: Arc<Mutex<BTreeMap<String, StateReport>>> = Arc::default();
        for (name, line) in inputs {
            input_states
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    name.clone(),
                    StateReport {
                        value: Value::Bool(line.initial),
                        ts: now_ms(),
                        cmd: None,
                    },
                );
            tasks.push(tokio::spawn(input_loop(
                name,
                line,
                input_states.clone(),
                state_tx.clone(),
                outbox.clone(),
            )));
        }
        for sensor in &config.sensors {
            tasks.push(tokio::spawn(sensor_loop(
                Sensor::new(sensor, &config),
                outbox.clone(),
            )));
        }

        let (link_state, link_rx) = watch::channel(LinkState::Starting);
        let link = Link {
            bundle: bundle.clone(),
            config: config.link.clone(),
            meta,
            outputs: outputs.clone(),
            input_states,
            outbox: outbox.clone(),
            replay_per_second: config.outbox.replay_per_second,
            state_rx,
            link_state,
        };
        let link_task = tokio::spawn(link.run(stop_rx.clone()));

        let statuses = supervisor.shared();
        let status = AgentStatus {
            pid: std::process::id(),
            device_id: bundle.device_id.clone(),
            started_ms: now_ms(),
            updated_ms: now_ms(),
            gpio: match sim {
                Some(_) => "simulated".into(),
                None => "linux".into(),
            },
            link: LinkState::Starting,
            outbox: OutboxStatus::default(),
            services: Vec::new(),
        };
        let status_task = tokio::spawn(status_loop(
            data_dir.clone(),
            status,
            link_rx.clone(),
            supervisor.changes(),
            statuses.clone(),
            outbox.clone(),
            stop_rx.clone(),
        ));

        let task = {
            let mut stop_rx = stop_rx.clone();
            let outbox = outbox.clone();
            let mut supervisor = supervisor;
            tokio::spawn(async move {
                let _ = crate::fsutil::stopped(&mut stop_rx).await;
                tracing::info!("agent stopping");
                if tokio::time::timeout(Duration::from_secs(5), link_task)
                    .await
                    .is_err()
                {
                    tracing::warn!("the broker link did not stop in time");
                }
                supervisor.stop_all().await;
                for t in tasks {
                    t.abort();
                }
                let _ = status_task.await;
                // Hold the lines until here: outputs keep their level until the agent is gone.
                drop(outputs);
                outbox.close().await;
            })
        };
        Ok(AgentHandle {
            sim,
            link: link_rx,
            stop,
            task,
            outbox,
            services: statuses,
            data_dir,
        })
    }
}

/// A running agent.
pub struct AgentHandle {
    sim: Option<SimGpio>,
    link: watch::Receiver<LinkState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    outbox: Outbox,
    services: crate::supervisor::SharedStatuses,
    data_dir: PathBuf,
}

impl AgentHandle {
    /// The simulated lines, when the agent runs on the simulated backend.
    pub fn sim(&self) -> Option<SimGpio> {
        self.sim.clone()
    }

    /// The broker link's state, updated as it changes.
    pub fn link_state(&self) -> watch::Receiver<LinkState> {
        self.link.clone()
    }

    /// Waits until the link is connected, up to `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.link.clone();
        tokio::time::timeout(timeout, rx.wait_for(LinkState::is_connected))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn services(&self) -> Vec<ServiceStatus> {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Asks the agent to stop (publish `offline`, stop services, release lines).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the agent has stopped.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }

    /// [`AgentHandle::stop`] and [`AgentHandle::stopped`].
    pub async fn shutdown(self) {
        self.stop();
        self.stopped().await;
    }
}

async fn input_loop(
    name: String,
    mut line: crate::gpio::InputLine,
    states: Arc<Mutex<BTreeMap<String, StateReport>>>,
    state_tx: mpsc::UnboundedSender<(String, StateReport)>,
    outbox: Outbox,
) {
    while let Some(edge) = line.edges.recv().await {
        let ts = now_ms();
        let report = StateReport {
            value: Value::Bool(edge.value),
            ts,
            cmd: None,
        };
        states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), report.clone());
        let _ = state_tx.send((name.clone(), report));
        let item = Item::Event {
            name: name.clone(),
            ts,
            value: Value::Bool(edge.value),
            edge: Some(edge.edge),
        };
        if let Err(err) = outbox.push(item).await
            && !matches!(err, OutboxError::Full { .. })
        {
            tracing::error!(input = %name, %err, "cannot queue an input event");
        }
    }
}

async fn sensor_loop(mut sensor: Sensor, outbox: Outbox) {
    let mut ticker = tokio::time::interval(sensor.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        match sensor.read().await {
            Ok(value) => {
                if failing {
                    tracing::info!(sensor = %sensor.name, "sensor readings work again");
                    failing = false;
                }
                let item = Item::Telemetry {
                    name: sensor.name.clone(),
                    ts: now_ms(),
                    value,
                };
                if let Err(err) = outbox.push(item).await
                    && !matches!(err, OutboxError::Full { .. })
                {
                    tracing::error!(sensor = %sensor.name, %err, "cannot queue a reading");
                }
            }
            Err(err) => {
                // Once per failure streak: a missing sensor must not flood the journal.
                if !failing {
                    tracing::warn!(sensor = %sensor.name, %err, "reading failed; retrying every interval");
                    failing = true;
                }
            }
        }
    }
}

async fn status_loop(
    data_dir: PathBuf,
    mut status: AgentStatus,
    mut link: watch::Receiver<LinkState>,
    mut services_changed: watch::Receiver<u64>,
    services: crate::supervisor::SharedStatuses,
    outbox: Outbox,
    mut stop: watch::Receiver<bool>,
) {
    let refresh = |status: &mut AgentStatus, link_state: LinkState| {
        status.updated_ms = now_ms();
        status.link = link_state;
        status.services = services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        status.outbox = OutboxStatus {
            queued: outbox.len(),
            dropped: outbox.dropped(),
            refused_full: outbox.rejected(),
        };
    };
    let mut stopping = false;
    loop {
        refresh(&mut status, link.borrow().clone());
        if let Err(err) = status.write(&data_dir) {
            tracing::warn!(%err, "cannot write the status file");
        }
        if stopping && status.link == LinkState::Stopped {
            return;
        }
        tokio::select! {
            r = link.changed() => if r.is_err() { stopping = true; },
            r = services_changed.changed() => if r.is_err() { stopping = true; },
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = crate::fsutil::stopped(&mut stop), if !stopping => { stopping = true; }
        }
        if stopping {
            // Let the link finish saying goodbye, then write the final state.
            let _ = tokio::time::timeout(
                Duration::from_secs(6),
                link.wait_for(|l| *l == LinkState::Stopped),
            )
            .await;
            refresh(&mut status, LinkState::Stopped);
            let _ = status.write(&data_dir);
            return;
        }
    }
}
