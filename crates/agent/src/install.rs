//! `devicecloud agent install|uninstall`: a hardened systemd unit and the config at standard
//! paths, under a `prefix` (normally `/`; tests use a temporary directory).

use std::path::{Path, PathBuf};

use crate::config::AgentConfig;

pub const UNIT_PATH: &str = "etc/systemd/system/devicecloud-agent.service";
pub const CONFIG_PATH: &str = "etc/devicecloud/agent.toml";
pub const BUNDLE_PATH: &str = "etc/devicecloud/device.bundle";
/// The unit's `StateDirectory`.
pub const STATE_DIR: &str = "/var/lib/devicecloud-agent";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot write {path}: {source} (run as root, e.g. with sudo, or pass --prefix)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The unit file. `binary` is the absolute path of the `devicecloud` executable.
pub fn unit_text(binary: &Path) -> String {
    format!(
        r#"# Installed by `devicecloud agent install`; remove with `devicecloud agent uninstall`.
[Unit]
Description=devicecloud device agent (GPIO, sensors, device services)
Documentation=https://github.com/devicecloud/devicecloud/blob/main/docs/agent.md
Wants=network-online.target
After=network-online.target time-sync.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={binary} agent --config /{CONFIG_PATH}
Restart=on-failure
RestartSec=2s
# The agent stops its services (SIGTERM to each process group, SIGKILL after their stop
# timeout) before it exits; systemd only cleans up after it.
KillMode=mixed
TimeoutStopSec=60s

# A user of its own, allocated by systemd, with access to the GPIO character devices
# (Raspberry Pi OS gives the gpio group rw on /dev/gpiochip*).
DynamicUser=yes
SupplementaryGroups=gpio
StateDirectory=devicecloud-agent
StateDirectoryMode=0700
WorkingDirectory=/var/lib/devicecloud-agent
ConfigurationDirectory=devicecloud

# Hardening: nothing but the state directory is writable, no privilege escalation, and only
# the GPIO devices are reachable.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
DevicePolicy=closed
DeviceAllow=char-gpiochip rw

[Install]
WantedBy=multi-user.target
"#,
        binary = binary.display()
    )
}

/// What `install` did, for the message to the user.
#[derive(Debug)]
pub struct Installed {
    pub unit: PathBuf,
    pub config: PathBuf,
    pub bundle: Option<PathBuf>,
}

/// Writes the unit and copies `config` (validated first) to `/etc/devicecloud/agent.toml`
/// under `prefix`. A bundle the config refers to is copied next to it (mode 0600) and the
/// config is pointed at the copy.
pub fn install(prefix: &Path, config: &Path, binary: &Path) -> Result<Installed, InstallError> {
    let parsed = AgentConfig::load(config)?;
    let mut text = std::fs::read_to_string(config).map_err(|source| InstallError::Read {
        path: config.into(),
        source,
    })?;
    let mut bundle = None;
    if let Some(src) = &parsed.bundle {
        let dest = prefix.join(BUNDLE_PATH);
        let bytes = std::fs::read(src).map_err(|source| InstallError::Read {
            path: src.clone(),
            source,
        })?;
        write(&dest, &bytes, 0o600)?;
        text = set_top_level(&text, "bundle", &Path::new("/").join(BUNDLE_PATH));
        bundle = Some(dest);
    }
    // The unit's StateDirectory is the only writable place under ProtectSystem=strict.
    text = set_top_level(&text, "data_dir", Path::new(STATE_DIR));
    let config_dest = prefix.join(CONFIG_PATH);
    write(&config_dest, text.as_bytes(), 0o640)?;
    let unit = prefix.join(UNIT_PATH);
    write(&unit, unit_text(binary).as_bytes(), 0o644)?;
    Ok(Installed {
        unit,
        config: config_dest,
        bundle,
    })
}

/// Removes what [`install`] wrote. Returns the files that were removed.
pub fn uninstall(prefix: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut removed = Vec::new();
    for rel in [UNIT_PATH, CONFIG_PATH, BUNDLE_PATH] {
        let path = prefix.join(rel);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(InstallError::Remove { path, source }),
        }
    }
    // Only if nothing else lives there.
    let _ = std::fs::remove_dir(prefix.join("etc/devicecloud"));
    Ok(removed)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| InstallError::Write {
            path: dir.into(),
            source,
        })?;
    }
    ::fsutil::write_atomic(path, bytes, mode).map_err(|source| InstallError::Write {
        path: path.into(),
        source,
    })
}

/// Sets the top-level `key = "value"` line, replacing it or adding it at the top.
fn set_top_level(text: &str, key: &str, value: &Path) -> String {
    let assignment = format!("{key} = {:?}\n", value.display().to_string());
    let mut in_table = false;
    let mut found = false;
    let mut out = String::with_capacity(text.len() + assignment.len());
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            in_table = true;
        }
        if !in_table
            && t.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        {
            out.push_str(&assignment);
            found = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if found {
        out
    } else {
        format!("{assignment}{out}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn install_and_uninstall_under_a_prefix() {
        let src = tempfile::tempdir().unwrap();
        let prefix = tempfile::tempdir().unwrap();
        std::fs::write(
            src.path().join("kitchen.bundle"),
            "device_id = \"kitchen\"\n",
        )
        .unwrap();
        let config = src.path().join("agent.toml");
        std::fs::write(
            &config,
            "bundle = \"kitchen.bundle\"\n\n[[output]]\nname = \"led\"\nline = 17\n",
        )
        .unwrap();
        let done = install(
            prefix.path(),
            &config,
            Path::new("/usr/local/bin/devicecloud"),
        )
        .unwrap();

        let unit = std::fs::read_to_string(&done.unit).unwrap();
        assert_eq!(
            done.unit,
            prefix
                .path()
                .join("etc/systemd/system/devicecloud-agent.service")
        );
        for line in [
            "Type=notify",
            "ExecStart=/usr/local/bin/devicecloud agent --config /etc/devicecloud/agent.toml",
            "Restart=on-failure",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "StateDirectory=devicecloud-agent",
            "SupplementaryGroups=gpio",
            "DeviceAllow=char-gpiochip rw",
        ] {
            assert!(unit.lines().any(|l| l == line), "missing {line}");
        }
        let installed = std::fs::read_to_string(&done.config).unwrap();
        assert!(
            installed.starts_with("data_dir = \"/var/lib/devicecloud-agent\"\nbundle = \"/etc/devicecloud/device.bundle\"\n"),
            "{installed}"
        );
        assert!(installed.contains("name = \"led\""));
        let bundle = done.bundle.unwrap();
        assert_eq!(
            std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_to_string(&bundle).unwrap(),
            "device_id = \"kitchen\"\n"
        );

        let removed = uninstall(prefix.path()).unwrap();
        assert_eq!(removed.len(), 3);
        assert!(!prefix.path().join("etc/devicecloud").exists());
        assert!(uninstall(prefix.path()).unwrap().is_empty(), "idempotent");
    }

    #[test]
    fn a_broken_config_is_not_installed() {
        let src = tempfile::tempdir().unwrap();
        let prefix = tempfile::tempdir().unwrap();
        let config = src.path().join("agent.toml");
        std::fs::write(&config, "[[output]]\nnam = \"led\"\n").unwrap();
        let err = install(prefix.path(), &config, Path::new("/usr/bin/devicecloud"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent.toml:2") && err.contains("nam"), "{err}");
        assert!(!prefix.path().join(UNIT_PATH).exists());
    }
}
