//! `devicecloud server`: the broker, the certificate authority, the device registry, the HTTP
//! API and the dashboard, in the foreground until SIGTERM or SIGINT.

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use server::{
    config::{CONFIG_FILE_NAME, ServerConfig},
    runtime::{Server, ServerOptions},
};

use crate::process::{DataDirLock, NofileLimit, raise_nofile_limit, shutdown_signal};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML). Default: server.toml in the data directory, if present.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (CA, certificates, database). Default: $DEVICECLOUD_DATA, else
    /// $XDG_DATA_HOME/devicecloud, else ~/.local/share/devicecloud.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Listen on URL instead of the configured listeners (repeatable): mqtt://, mqtts://,
    /// ws://, wss:// for the broker; https://, http:// for the API and dashboard.
    #[arg(long = "listen", value_name = "URL")]
    pub listen: Vec<String>,
    /// Print a configuration file with every default commented out, and exit.
    #[arg(long)]
    pub print_config: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.print_config {
        print!(
            "{}",
            ServerConfig::default_file_text(&server::runtime::default_limits())
        );
        return Ok(ExitCode::SUCCESS);
    }
    let data_dir = args.data.unwrap_or_else(store::default_data_dir);
    // Before anything opens the journal or the database: a second server stops here.
    let _lock = DataDirLock::acquire(&data_dir)?;
    let nofile = raise_nofile_limit()?;
    // Watched from now on, so a SIGTERM during start-up stops the server cleanly.
    let stop = shutdown_signal();
    let mut config = match &args.config {
        Some(path) => ServerConfig::load(path)?,
        None => ServerConfig::load_or_default(&data_dir.join(CONFIG_FILE_NAME))?,
    };
    fit_max_connections(&mut config, &nofile);
    let mut options = ServerOptions::new(config, &data_dir);
    options.listen = args.listen;
    let running = Server::start(options).await.with_context(|| {
        format!(
            "cannot start the server (data directory {})",
            data_dir.display()
        )
    })?;

    // The one place the admin password is shown: stdout, never the log.
    let mut out = std::io::stdout().lock();
    if let Some(password) = &running.initial_admin_password {
        writeln!(out, "Created user 'admin' with password: {password}")?;
        writeln!(
            out,
            "  (shown only now; change it with `devicecloud user passwd admin`)"
        )?;
    }
    writeln!(
        out,
        "devicecloud server running, data in {}",
        data_dir.display()
    )?;
    for listener in &running.listeners {
        writeln!(out, "  listening on {}", listener.url)?;
    }
    writeln!(
        out,
        "  CA certificate: {} (SHA-256 {})",
        running.ctx.ca.cert_path().display(),
        running.ca_fingerprint()
    )?;
    out.flush()?;
    drop(out);

    stop.await;
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Caps the default `limits.max_connections` to what the open-files limit can serve (an
/// explicit setting is kept, with a warning).
pub fn fit_max_connections(config: &mut ServerConfig, nofile: &NofileLimit) {
    let default = server::runtime::default_limits()
        .max_connections
        .unwrap_or(usize::MAX);
    config.limits.max_connections =
        Some(nofile.max_connections(config.limits.max_connections, default));
}
