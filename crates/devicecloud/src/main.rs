//! `devicecloud`: one binary, every role (broker, server, agent, ...).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod process;

#[derive(Debug, Parser)]
#[command(
    name = "devicecloud",
    version,
    about = "A self-hosted IoT device cloud"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the MQTT broker on its own.
    Broker(cmd::broker::Args),
    /// Run the server: broker, certificate authority, device registry, HTTP API and dashboard.
    Server(cmd::server::Args),
    /// Start a server and a simulated device in one process: the hello world.
    Up(cmd::up::Args),
    /// Manage devices in a server's registry.
    Device(cmd::device::Args),
    /// Manage the server's local users.
    User(cmd::user::Args),
    /// Manage API tokens for scripts.
    Token(cmd::token::Args),
    /// Show the audit log of administrative actions.
    Audit(cmd::audit::Args),
    /// Run the device agent (GPIO, sensors, services), or enroll/install it.
    Agent(cmd::agent::Args),
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("devicecloud: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    // Exactly one rustls crypto provider is compiled in (ring); make it the process default
    // before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging();
    // The agent is one connection and a handful of timers: a single-threaded runtime keeps it to
    // one thread (plus short-lived blocking threads for file I/O) instead of a worker per core,
    // which matters on small devices. `up` still runs the agent in-process on the server's
    // multi-threaded runtime.
    let mut builder = if matches!(cli.command, Command::Agent(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Broker(args) => cmd::broker::run(args).await,
            Command::Server(args) => cmd::server::run(args).await,
            Command::Up(args) => cmd::up::run(args).await,
            Command::Device(args) => cmd::device::run(args).await,
            Command::User(args) => cmd::user::run(args).await,
            Command::Token(args) => cmd::token::run(args).await,
            Command::Audit(args) => cmd::audit::run(args).await,
            Command::Agent(args) => cmd::agent::run(args).await,
        }
    })
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // rustls warns about every client that connects by IP address (no SNI); that is normal here.
    let filter = EnvFilter::try_from_env("DEVICECLOUD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
