//! `devicecloud agent`: run the device agent, or enroll, install, inspect it.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use agent::{
    Agent, AgentConfig, SimGpio,
    gpio::sim::{SOCKET_FILE, send_control},
    status::AgentStatus,
};
use anyhow::{Context, bail};
use clap::Subcommand;

use crate::process::shutdown_signal;

const DEFAULT_CONFIG: &str = "/etc/devicecloud/agent.toml";

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The agent's configuration (outputs, inputs, sensors, services, bundle).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The device bundle; overrides the config's `bundle`.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Simulated GPIO; without --config, the demo device (led, button, temperature).
    #[arg(long)]
    simulate: bool,
    /// Where the outbox, desired state, logs and status live; overrides the config.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Show the running agent's link, outbox and services.
    Status(StatusArgs),
    /// Install the agent as a systemd service (unit + config in /etc).
    Install {
        /// The config to install as /etc/devicecloud/agent.toml.
        #[arg(long, short, default_value = "agent.toml")]
        config: PathBuf,
        /// Install under this root instead of / (for images and tests).
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
        /// The devicecloud binary the unit runs (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Remove what `install` wrote.
    Uninstall {
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
    },
    /// Get a certificate from the server with a one-time code; writes the device bundle.
    Enroll {
        /// The server's HTTPS API, e.g. https://cloud.example:8443
        url: String,
        /// The one-time code from `devicecloud device add NAME --enroll`.
        code: String,
        /// SHA-256 of the server's CA certificate (printed with the code).
        #[arg(long)]
        ca_sha256: String,
        /// Directory for device.bundle (and a starter agent.toml if there is none).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Drive or read the simulated GPIO lines of a running `--simulate` agent.
    Sim {
        #[command(subcommand)]
        command: SimCommand,
        #[command(flatten)]
        at: DataDirArgs,
    },
}

#[derive(Debug, clap::Args)]
struct DataDirArgs {
    /// The agent's data directory.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Or the config that names it.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    at: DataDirArgs,
    /// Print the raw status JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum SimCommand {
    /// Drive an input: `sim set button 1`.
    Set { name: String, level: String },
    /// Read a line: `sim get led`.
    Get { name: String },
    /// All simulated lines.
    List,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        None => run_agent(args.run).await,
        Some(Sub::Status(s)) => status(s),
        Some(Sub::Install {
            config,
            prefix,
            binary,
        }) => {
            let binary = match binary {
                Some(b) => b,
                None => std::env::current_exe()
                    .context("cannot find this program's path; pass --binary")?,
            };
            let done = agent::install::install(&prefix, &config, &binary)?;
            println!("wrote {}", done.unit.display());
            println!("wrote {}", done.config.display());
            if let Some(b) = done.bundle {
                println!("wrote {} (mode 0600)", b.display());
            }
            println!(
                "now run: systemctl daemon-reload && systemctl enable --now devicecloud-agent"
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Sub::Uninstall { prefix }) => {
            let removed = agent::install::uninstall(&prefix)?;
            if removed.is_empty() {
                println!(
                    "nothing to remove: the agent is not installed under {}",
                    prefix.display()
                );
            }
            for p in removed {
                println!("removed {}", p.display());
            }
            println!(
                "run `systemctl disable --now devicecloud-agent` first if it was running, then `systemctl daemon-reload`"
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Sub::Enroll {
            url,
            code,
            ca_sha256,
            out,
        }) => {
            let bundle = agent::enroll::enroll(&url, &code, &ca_sha256).await?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let path = out.join("device.bundle");
            bundle.save(&path)?;
            println!(
                "enrolled as device '{}'; wrote {} (mode 0600)",
                bundle.device_id,
                path.display()
            );
            let config = out.join("agent.toml");
            if !config.exists() {
                let text = format!(
                    "bundle = \"device.bundle\"\ndata_dir = \"/var/lib/devicecloud-agent\"\n\n{}",
                    agent::demo::DEMO_TOML
                        .replace("backend = \"simulated\"", "backend = \"linux\"")
                );
                std::fs::write(&config, text)
                    .with_context(|| format!("cannot write {}", config.display()))?;
                println!(
                    "wrote a starter {}; edit the lines and sensors, then `devicecloud agent install --config {}`",
                    config.display(),
                    config.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Sub::Sim { command, at }) => {
            let socket = data_dir_of(&at)?.join(SOCKET_FILE);
            let line = match &command {
                SimCommand::Set { name, level } => format!("set {name} {level}"),
                SimCommand::Get { name } => format!("get {name}"),
                SimCommand::List => "list".into(),
            };
            let answer = send_control(&socket, &line)
                .await
                .with_context(|| format!("cannot reach a simulating agent at {}; is `devicecloud agent --simulate` running with this data directory?", socket.display()))?;
            if let Some(err) = answer.strip_prefix("error: ") {
                bail!("{err}");
            }
            println!("{}", answer.replace("; ", "\n"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn data_dir_of(at: &DataDirArgs) -> anyhow::Result<PathBuf> {
    if let Some(d) = &at.data_dir {
        return Ok(d.clone());
    }
    let config = at
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    if !config.exists() && at.config.is_none() && Path::new(SIM_DATA_DIR).exists() {
        return Ok(PathBuf::from(SIM_DATA_DIR));
    }
    Ok(AgentConfig::load(&config)?.data_dir)
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let dir = data_dir_of(&args.at)?;
    let status = AgentStatus::read(&dir).map_err(anyhow::Error::msg)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(if status.agent_alive() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// Data directory of `--simulate` without a config.
const SIM_DATA_DIR: &str = "devicecloud-agent-sim";

async fn run_agent(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut config = match (&args.config, args.simulate) {
        (Some(path), _) => AgentConfig::load(path)?,
        (None, true) => agent::demo::demo_config(PathBuf::from(SIM_DATA_DIR)),
        (None, false) => {
            let path = Path::new(DEFAULT_CONFIG);
            if !path.exists() {
                bail!(
                    "no config: pass --config agent.toml (or --bundle FILE --simulate to try the demo device without hardware)"
                );
            }
            AgentConfig::load(path)?
        }
    };
    if args.simulate {
        config.gpio.backend = agent::config::GpioBackend::Simulated;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(bundle) = &args.bundle {
        config.bundle = Some(bundle.clone());
        config.connection = None;
    }
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    let bundle = config.load_bundle()?;
    let gpio: Arc<dyn agent::Gpio> = match config.gpio.backend {
        agent::config::GpioBackend::Simulated => {
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!(
                    "cannot create the data directory {}",
                    config.data_dir.display()
                )
            })?;
            Arc::new(SimGpio::in_data_dir(&config.data_dir))
        }
        agent::config::GpioBackend::Linux => agent::gpio_for(&config),
    };
    let data_dir = config.data_dir.clone();
    let simulated = args.simulate || config.gpio.backend == agent::config::GpioBackend::Simulated;
    let handle = Agent::start(config, bundle, gpio, shutdown_signal()).await?;
    let _ = sd_notify(&[SdState::Ready]);
    tracing::info!(data_dir = %data_dir.display(), "agent running");
    if simulated {
        eprintln!(
            "simulated GPIO: lines in {}; press the button with `devicecloud agent sim set button 1 --data-dir {}`",
            data_dir.join(agent::gpio::sim::STATE_FILE).display(),
            data_dir.display()
        );
    }
    handle.stopped().await;
    let _ = sd_notify(&[SdState::Stopping]);
    Ok(ExitCode::SUCCESS)
}

enum SdState {
    Ready,
    Stopping,
}

/// Tells systemd (Type=notify) where we are; a no-op outside systemd.
fn sd_notify(states: &[SdState]) -> std::io::Result<()> {
    let states: Vec<sd_notify::NotifyState> = states
        .iter()
        .map(|s| match s {
            SdState::Ready => sd_notify::NotifyState::Ready,
            SdState::Stopping => sd_notify::NotifyState::Stopping,
        })
        .collect();
    sd_notify::notify(false, &states)
}
