//! `devicecloud device ...`: register devices and issue, rotate and revoke their credentials.
//!
//! Works on the data directory directly (database + CA), so it works whether or not the
//! server runs; a running server notices registry changes through the store's change counter
//! and applies revocations within a second.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, bail};
use pki::Ca;
use proto::bundle::{Bundle, Credentials};
use server::config::{CONFIG_FILE_NAME, Listener, ListenerKind, ServerConfig};
use store::{Device, DeviceCredential, Grants, Store, secret};

/// Enrollment codes are short-lived: long enough to walk to the device and type it.
const ENROLL_VALIDITY: Duration = Duration::from_secs(15 * 60);

/// `--data DIR`, shared by every command that works on a server's state.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Data directory of the server (database, CA). Default: $DEVICECLOUD_DATA, else
    /// $XDG_DATA_HOME/devicecloud, else ~/.local/share/devicecloud.
    #[arg(long, value_name = "DIR", global = true)]
    pub data: Option<PathBuf>,
}

/// The data directory, the server's configuration and its database.
pub struct Workspace {
    pub data_dir: PathBuf,
    pub config: ServerConfig,
    pub store: Store,
}

impl DataArgs {
    pub fn dir(&self) -> PathBuf {
        self.data.clone().unwrap_or_else(store::default_data_dir)
    }

    /// Opens the server's database (as configured in DATA/server.toml, default DATA/devicecloud.db).
    pub async fn open(&self) -> anyhow::Result<Workspace> {
        let data_dir = self.dir();
        create_private_dir(&data_dir)?;
        let config = ServerConfig::load_or_default(&data_dir.join(CONFIG_FILE_NAME))?;
        let url = config.database_url(&data_dir);
        let store = Store::open(&url)
            .await
            .with_context(|| format!("data directory {}", data_dir.display()))?;
        Ok(Workspace {
            data_dir,
            config,
            store,
        })
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))
}

/// `cli:<unix user>`: who did an administrative action from the command line.
pub fn actor() -> String {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid{uid}"));
    format!("cli:{name}")
}

/// Epoch milliseconds as `2026-11-27 07:05:00Z`.
pub fn format_time(ms: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) else {
        return ms.to_string();
    };
    t.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second]Z"
    ))
    .unwrap_or_else(|_| ms.to_string())
}

/// "3m ago", "2h ago", "5d ago".
pub fn format_ago(ms: i64, now: i64) -> String {
    let secs = (now - ms).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// Prints rows as aligned columns.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Register a device and issue its credentials (a client certificate by default).
    Add(AddArgs),
    /// List devices with their presence and credential kind.
    List,
    /// Show one device.
    Show {
        /// Device id.
        name: String,
    },
    /// Remove a device; its credentials stop working at once.
    Remove {
        /// Device id.
        name: String,
    },
    /// Issue new credentials for a device; the old ones stop working at once.
    Rotate(RotateArgs),
}

#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Where to write the device bundle. Default: NAME.bundle in the current directory.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also write ca.crt, NAME.crt and NAME.key (or NAME.token) into DIR, for mosquitto_pub
    /// --cafile/--cert/--key and other MQTT clients.
    #[arg(long, value_name = "DIR")]
    pub pem: Option<PathBuf>,
    /// Overwrite existing output files.
    #[arg(long)]
    pub force: bool,
    /// Validity of a new client certificate, in days.
    #[arg(long, value_name = "DAYS", default_value_t = 3650)]
    pub days: u32,
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Device id: 1 to 63 characters from a-z, 0-9, '_' and '-'.
    pub name: String,
    /// Issue a random token (MQTT user name = device id, password = token) instead of a
    /// client certificate.
    #[arg(long, conflicts_with = "enroll")]
    pub token: bool,
    /// Do not issue credentials here: print a one-time code (valid 15 minutes) for
    /// `devicecloud agent enroll` on the device, which keeps its private key to itself.
    #[arg(long)]
    pub enroll: bool,
    /// Also allow the device to publish to FILTER (repeatable).
    #[arg(long = "grant-publish", value_name = "FILTER")]
    pub grant_publish: Vec<String>,
    /// Also allow the device to subscribe to FILTER (repeatable).
    #[arg(long = "grant-subscribe", value_name = "FILTER")]
    pub grant_subscribe: Vec<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Device id.
    pub name: String,
    /// Switch to a token (default: the device's current kind; certificate for pending ones).
    #[arg(long, conflicts_with = "certificate")]
    pub token: bool,
    /// Switch to a client certificate.
    #[arg(long)]
    pub certificate: bool,
    /// Revoke the current credential and print a new one-time enrollment code instead of
    /// issuing credentials here.
    #[arg(long, conflicts_with_all = ["token", "certificate"])]
    pub enroll: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ws = args.data.open().await?;
    let result = match args.command {
        Command::Add(add) => add_device(&ws, add).await,
        Command::List => list(&ws).await,
        Command::Show { name } => show(&ws, &name).await,
        Command::Remove { name } => remove(&ws, &name).await,
        Command::Rotate(rotate) => rotate_device(&ws, rotate).await,
    };
    ws.store.close().await;
    result.map(|()| ExitCode::SUCCESS)
}

fn load_ca(ws: &Workspace) -> anyhow::Result<Ca> {
    // Creating the CA here is what the server would do on its first start; it reuses it.
    let (ca, _created) = Ca::load_or_create(&ws.data_dir.join(store::CA_DIR))?;
    Ok(ca)
}

/// A host name for URLs when the server listens on every interface.
fn public_host(config: &ServerConfig) -> String {
    config
        .cert_hostnames()
        .into_iter()
        .next()
        .unwrap_or_else(|| "localhost".into())
}

fn listener_url(config: &ServerConfig, listener: &Listener) -> String {
    let host = if listener.addr.ip().is_unspecified() {
        public_host(config)
    } else {
        match listener.addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    format!(
        "{}://{host}:{}",
        listener.kind.scheme(),
        listener.addr.port()
    )
}

/// Broker URLs for bundles: the configured public ones, else the server's TLS MQTT listeners.
fn broker_urls(config: &ServerConfig) -> Vec<String> {
    if !config.public_broker_urls.is_empty() {
        return config.public_broker_urls.clone();
    }
    let urls: Vec<String> = config
        .listeners
        .iter()
        .filter_map(|url| url.parse::<Listener>().ok())
        .filter(|l| l.kind == ListenerKind::Mqtts)
        .map(|l| listener_url(config, &l))
        .collect();
    if urls.is_empty() {
        vec![format!("mqtts://{}:8883", public_host(config))]
    } else {
        urls
    }
}

/// The web tier's URL for bundles and enrollment lines.
fn api_url(config: &ServerConfig) -> String {
    if let Some(url) = &config.public_api_url {
        return url.clone();
    }
    config
        .listeners
        .iter()
        .filter_map(|url| url.parse::<Listener>().ok())
        .find(|l| l.kind == ListenerKind::Https)
        .map(|l| listener_url(config, &l))
        .unwrap_or_else(|| format!("https://{}:8443", public_host(config)))
}

/// The output files of a device, checked before anything is registered.
struct Outputs {
    bundle: PathBuf,
    pem_dir: Option<PathBuf>,
}

impl Outputs {
    fn plan(name: &str, args: &OutputArgs, overwrite_bundle: bool) -> anyhow::Result<Outputs> {
        let bundle = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{name}.bundle")));
        if bundle.exists() && !(args.force || overwrite_bundle) {
            bail!(
                "{} already exists: pass --force to overwrite it, or --out FILE",
                bundle.display()
            );
        }
        if let Some(dir) = &args.pem {
            for file in [
                format!("{name}.crt"),
                format!("{name}.key"),
                format!("{name}.token"),
            ] {
                let path = dir.join(file);
                if path.exists() && !(args.force || overwrite_bundle) {
                    bail!(
                        "{} already exists: pass --force to overwrite it",
                        path.display()
                    );
                }
            }
        }
        Ok(Outputs {
            bundle,
            pem_dir: args.pem.clone(),
        })
    }

    fn write(&self, bundle: &Bundle) -> anyhow::Result<()> {
        bundle.save(&self.bundle)?;
        if let Some(dir) = &self.pem_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            pki::write_public_file(&dir.join("ca.crt"), bundle.ca_pem.as_bytes())?;
            let name = &bundle.device_id;
            match &bundle.credentials {
                Credentials::Certificate { cert_pem, key_pem } => {
                    pki::write_public_file(&dir.join(format!("{name}.crt")), cert_pem.as_bytes())?;
                    pki::write_private_file(&dir.join(format!("{name}.key")), key_pem.as_bytes())?;
                }
                Credentials::Token { token } => {
                    pki::write_private_file(&dir.join(format!("{name}.token")), token.as_bytes())?;
                }
            }
        }
        Ok(())
    }

    fn describe(&self, credentials: &Credentials, name: &str) -> String {
        let mut text = format!(
            "bundle: {} (keep it secret: it is the device's identity)",
            self.bundle.display()
        );
        if let Some(dir) = &self.pem_dir {
            match credentials {
                Credentials::Certificate { .. } => text.push_str(&format!(
                    "\nPEM files: {0}/ca.crt, {0}/{name}.crt, {0}/{name}.key",
                    dir.display()
                )),
                Credentials::Token { .. } => text.push_str(&format!(
                    "\nPEM files: {0}/ca.crt, and the token in {0}/{name}.token (MQTT user name: {name})",
                    dir.display()
                )),
            }
        }
        text
    }
}

/// New credentials: what the store keeps and what the bundle carries.
fn issue(
    ca: &Ca,
    name: &str,
    token: bool,
    days: u32,
) -> anyhow::Result<(DeviceCredential, Credentials)> {
    if token {
        // 128 random bits: stored as a plain SHA-256, see store::secret.
        let token = secret::generate_device_token();
        Ok((
            DeviceCredential::Token {
                token_hash: secret::hash_token(&token),
            },
            Credentials::Token { token },
        ))
    } else {
        let issued =
            ca.issue_device_cert(name, Duration::from_secs(u64::from(days.max(1)) * 86_400))?;
        Ok((
            DeviceCredential::Certificate {
                serial_hex: issued.info.serial_hex.clone(),
                fingerprint_sha256: issued.info.fingerprint_sha256.clone(),
                not_after_ms: issued.info.not_after_unix * 1000,
            },
            Credentials::Certificate {
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
            },
        ))
    }
}

fn describe_credential(c: &DeviceCredential) -> String {
    match c {
        DeviceCredential::Certificate { serial_hex, .. } => format!("certificate {serial_hex}"),
        DeviceCredential::Token { .. } => "token".into(),
        DeviceCredential::Pending => "pending enrollment".into(),
    }
}

async fn add_device(ws: &Workspace, args: AddArgs) -> anyhow::Result<()> {
    let name = args.name.as_str();
    proto::topics::validate_device_id(name)?;
    if ws.store.devices().get(name).await?.is_some() {
        return Err(store::Error::DeviceExists(name.to_string()).into());
    }
    let grants = Grants {
        publish: args.grant_publish,
        subscribe: args.grant_subscribe,
    };
    grants.validate()?;
    let ca = load_ca(ws)?;
    let actor = actor();
    let grant_note = if grants.is_empty() {
        String::new()
    } else {
        format!(
            "; grants publish={:?} subscribe={:?}",
            grants.publish, grants.subscribe
        )
    };

    if args.enroll {
        ws.store
            .devices()
            .add(name, &DeviceCredential::Pending, &grants)
            .await?;
        let expires_at = print_enroll_line(ws, &ca, name).await?;
        ws.store
            .audit()
            .append(
                &actor,
                "device.add",
                name,
                &format!(
                    "enrollment code, expires {}{grant_note}",
                    format_time(expires_at)
                ),
            )
            .await?;
        return Ok(());
    }

    let outputs = Outputs::plan(name, &args.output, false)?;
    let (credential, credentials) = issue(&ca, name, args.token, args.output.days)?;
    let bundle = Bundle {
        device_id: name.to_string(),
        broker_urls: broker_urls(&ws.config),
        api_url: Some(api_url(&ws.config)),
        ca_pem: ca.cert_pem().to_string(),
        credentials,
    };
    // Files first: if they cannot be written, nothing is registered.
    outputs.write(&bundle)?;
    if let Err(err) = ws.store.devices().add(name, &credential, &grants).await {
        let _ = std::fs::remove_file(&outputs.bundle);
        return Err(err.into());
    }
    ws.store
        .audit()
        .append(
            &actor,
            "device.add",
            name,
            &format!("{}{grant_note}", describe_credential(&credential)),
        )
        .await?;
    println!(
        "device '{name}' added with a {}.",
        bundle.credentials.kind()
    );
    println!("{}", outputs.describe(&bundle.credentials, name));
    println!("broker: {}", bundle.broker_urls.join(", "));
    Ok(())
}

/// Creates a one-time enrollment code for a registered device and prints the command to run
/// on it (stdout: the one place a secret is printed). Returns the code's expiry.
async fn print_enroll_line(ws: &Workspace, ca: &Ca, name: &str) -> anyhow::Result<i64> {
    let code = secret::generate_enroll_code();
    let expires_at = store::now_ms() + ENROLL_VALIDITY.as_millis() as i64;
    ws.store
        .enroll()
        .create(name, &secret::hash_enroll_code(&code), expires_at)
        .await?;
    eprintln!("device '{name}' gets its certificate when it enrolls.");
    eprintln!(
        "The code works once, until {}. On the device, run:",
        format_time(expires_at)
    );
    println!(
        "devicecloud agent enroll {} {code} --ca-sha256 {}",
        api_url(&ws.config),
        ca.sha256_hex()
    );
    Ok(expires_at)
}

async fn rotate_device(ws: &Workspace, args: RotateArgs) -> anyhow::Result<()> {
    let name = args.name.as_str();
    let device = ws.store.devices().require(name).await?;
    if args.enroll {
        let ca = load_ca(ws)?;
        let old = ws
            .store
            .devices()
            .set_credential(name, &DeviceCredential::Pending, "re-enrollment")
            .await?;
        let expires_at = print_enroll_line(ws, &ca, name).await?;
        let detail = format!(
            "{} -> enrollment code, expires {}",
            describe_credential(&old),
            format_time(expires_at)
        );
        ws.store
            .audit()
            .append(&actor(), "device.rotate", name, &detail)
            .await?;
        return Ok(());
    }
    let token = if args.token {
        true
    } else if args.certificate {
        false
    } else {
        matches!(device.credential, DeviceCredential::Token { .. })
    };
    // The old bundle is worthless after rotation: overwriting it is the point.
    let outputs = Outputs::plan(name, &args.output, true)?;
    let ca = load_ca(ws)?;
    let (credential, credentials) = issue(&ca, name, token, args.output.days)?;
    let bundle = Bundle {
        device_id: name.to_string(),
        broker_urls: broker_urls(&ws.config),
        api_url: Some(api_url(&ws.config)),
        ca_pem: ca.cert_pem().to_string(),
        credentials,
    };
    outputs.write(&bundle)?;
    let old = ws
        .store
        .devices()
        .set_credential(name, &credential, "rotated")
        .await?;
    ws.store
        .audit()
        .append(
            &actor(),
            "device.rotate",
            name,
            &format!(
                "{} -> {}",
                describe_credential(&old),
                describe_credential(&credential)
            ),
        )
        .await?;
    println!(
        "device '{name}' has a new {}; the old {} no longer works.",
        bundle.credentials.kind(),
        old.kind()
    );
    println!("{}", outputs.describe(&bundle.credentials, name));
    Ok(())
}

async fn remove(ws: &Workspace, name: &str) -> anyhow::Result<()> {
    let device = ws.store.devices().remove(name).await?;
    ws.store
        .audit()
        .append(
            &actor(),
            "device.remove",
            name,
            &describe_credential(&device.credential),
        )
        .await?;
    println!(
        "device '{name}' removed; its {} is revoked.",
        device.credential.kind()
    );
    Ok(())
}

fn presence(device: &Device, now: i64) -> (String, String) {
    let status = if device.online { "online" } else { "offline" }.to_string();
    let seen = match device.last_seen {
        Some(ts) => format_ago(ts, now),
        None => "never".into(),
    };
    (status, seen)
}

async fn list(ws: &Workspace) -> anyhow::Result<()> {
    let devices = ws.store.devices().list().await?;
    if devices.is_empty() {
        eprintln!("no devices yet: add one with devicecloud device add NAME");
        return Ok(());
    }
    let now = store::now_ms();
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            let (status, seen) = presence(d, now);
            let credential = match &d.credential {
                DeviceCredential::Certificate { not_after_ms, .. } => {
                    format!("certificate (until {})", &format_time(*not_after_ms)[..10])
                }
                other => describe_credential(other),
            };
            vec![d.id.clone(), status, seen, credential]
        })
        .collect();
    print_table(&["ID", "STATUS", "LAST SEEN", "CREDENTIAL"], &rows);
    Ok(())
}

async fn show(ws: &Workspace, name: &str) -> anyhow::Result<()> {
    let d = ws.store.devices().require(name).await?;
    let now = store::now_ms();
    let (status, seen) = presence(&d, now);
    println!("id:          {}", d.id);
    println!("created:     {}", format_time(d.created_at));
    println!("status:      {status} (last seen {seen})");
    match &d.credential {
        DeviceCredential::Certificate {
            serial_hex,
            fingerprint_sha256,
            not_after_ms,
        } => {
            println!("credential:  client certificate, CN={}", d.id);
            println!("  serial:      {serial_hex}");
            println!("  sha256:      {fingerprint_sha256}");
            println!("  expires:     {}", format_time(*not_after_ms));
        }
        DeviceCredential::Token { .. } => println!("credential:  token (MQTT user name {})", d.id),
        DeviceCredential::Pending => println!("credential:  none yet (waiting for enrollment)"),
    }
    if !d.grants.is_empty() {
        println!(
            "grants:      publish {:?}, subscribe {:?}",
            d.grants.publish, d.grants.subscribe
        );
    }
    if let Some(meta) = &d.meta {
        match serde_json::from_value::<proto::payload::Meta>(meta.clone()) {
            Ok(meta) => {
                if !meta.agent.is_empty() {
                    println!("agent:       {}", meta.agent);
                }
                let ports = |ports: &[proto::payload::Port]| {
                    ports
                        .iter()
                        .map(|p| format!("{} ({})", p.name, p.value_type))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!("outputs:     {}", ports(&meta.outputs));
                println!("inputs:      {}", ports(&meta.inputs));
                let sensors: Vec<String> = meta
                    .sensors
                    .iter()
                    .map(|s| {
                        if s.unit.is_empty() {
                            s.name.clone()
                        } else {
                            format!("{} [{}]", s.name, s.unit)
                        }
                    })
                    .collect();
                println!("sensors:     {}", sensors.join(", "));
            }
            Err(_) => println!("meta:        {meta}"),
        }
    }
    let telemetry = ws.store.telemetry();
    for sensor in telemetry.sensors(&d.id).await? {
        if let Some((ts, value)) = telemetry.latest(&d.id, &sensor).await? {
            println!("telemetry:   {sensor} = {value} ({})", format_ago(ts, now));
        }
    }
    Ok(())
}
