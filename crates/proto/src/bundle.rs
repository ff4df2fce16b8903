//! The device bundle: one TOML file with everything an agent needs to connect (written by
//! `devicecloud device add`, read by the agent).
//!
//! ```toml
//! device_id = "kitchen"
//! broker_urls = ["mqtts://host.example:8883"]   # first reachable wins
//! api_url = "https://host.example:8443"
//! ca_pem = """-----BEGIN CERTIFICATE-----..."""
//! # exactly one of:
//! cert_pem = """..."""     # client certificate, CN = device_id
//! key_pem = """..."""
//! # or
//! token = "..."            # MQTT username = device_id, password = token
//! ```

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// How the device authenticates to the broker.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A client certificate (CN = device id) and its private key, both PEM.
    Certificate { cert_pem: String, key_pem: String },
    /// MQTT user name = device id, password = this token.
    Token { token: String },
}

// Secrets stay out of logs even when someone debug-prints a bundle.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Certificate { .. } => f.write_str("Certificate { .. }"),
            Credentials::Token { .. } => f.write_str("Token { .. }"),
        }
    }
}

impl Credentials {
    pub fn kind(&self) -> &'static str {
        match self {
            Credentials::Certificate { .. } => "certificate",
            Credentials::Token { .. } => "token",
        }
    }
}

/// Everything a device needs to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub device_id: String,
    /// Tried in order; the first reachable wins.
    pub broker_urls: Vec<String>,
    /// The server's HTTPS API, for enrollment and renewal.
    pub api_url: Option<String>,
    /// The CA that signed the broker's certificate (and the device's).
    pub ca_pem: String,
    pub credentials: Credentials,
}

/// A bundle could not be read or written. Messages name the file, and the line and key when known.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read bundle {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write bundle {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        origin: String,
        line: Option<usize>,
        key: Option<String>,
        message: String,
    },
}

/// The file layout; every field optional so that we can say which one is missing.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBundle {
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    broker_urls: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl Bundle {
    /// Reads and validates a bundle file.
    pub fn load(path: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| BundleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Bundle::parse(&text, &path.display().to_string())
    }

    /// Parses a bundle; `origin` names it in errors (a file name, "enrollment response").
    pub fn parse(text: &str, origin: &str) -> Result<Bundle, BundleError> {
        let raw = parse_raw(text, origin)?;
        let ctx = Ctx { text, origin };
        let credentials = match (raw.cert_pem, raw.key_pem, raw.token) {
            (Some(cert_pem), Some(key_pem), None) => {
                ctx.check_pem("cert_pem", &cert_pem, "CERTIFICATE")?;
                ctx.check_pem("key_pem", &key_pem, "PRIVATE KEY")?;
                Credentials::Certificate { cert_pem, key_pem }
            }
            (None, None, Some(token)) => {
                if token.trim().is_empty() {
                    return Err(ctx.invalid("token", "the token is empty"));
                }
                Credentials::Token { token }
            }
            (Some(_), None, None) => {
                return Err(ctx.invalid("cert_pem", "cert_pem needs key_pem next to it"));
            }
            (None, Some(_), None) => {
                return Err(ctx.invalid("key_pem", "key_pem needs cert_pem next to it"));
            }
            (None, None, None) => {
                return Err(ctx.invalid(
                    "",
                    "no credentials: the bundle needs either cert_pem and key_pem, or token",
                ));
            }
            _ => {
                return Err(ctx.invalid(
                    "token",
                    "both a certificate and a token: keep exactly one of cert_pem/key_pem or token",
                ));
            }
        };
        finish(
            ctx,
            raw.device_id,
            raw.broker_urls,
            raw.api_url,
            raw.ca_pem,
            credentials,
        )
    }

    /// Builds the bundle an enrolled device keeps: the server's bundle (which carries no
    /// private key and no token; see [`Bundle::to_public_toml`]), the certificate the server
    /// signed, and the key that never left the device.
    pub fn from_enrollment(
        public_toml: &str,
        origin: &str,
        cert_pem: String,
        key_pem: String,
    ) -> Result<Bundle, BundleError> {
        let raw = parse_raw(public_toml, origin)?;
        let ctx = Ctx {
            text: public_toml,
            origin,
        };
        if raw.key_pem.is_some() || raw.token.is_some() {
            return Err(ctx.invalid("key_pem", "an enrollment bundle must not carry a secret"));
        }
        ctx.check_pem("cert_pem", &cert_pem, "CERTIFICATE")?;
        ctx.check_pem("key_pem", &key_pem, "PRIVATE KEY")?;
        let credentials = Credentials::Certificate { cert_pem, key_pem };
        finish(
            ctx,
            raw.device_id,
            raw.broker_urls,
            raw.api_url,
            raw.ca_pem,
            credentials,
        )
    }

    /// The bundle as TOML, secrets included.
    pub fn to_toml(&self) -> String {
        self.render(true)
    }

    /// The bundle as TOML without `key_pem` or `token` (the certificate stays): what the server
    /// sends to an enrolling device.
    pub fn to_public_toml(&self) -> String {
        self.render(false)
    }

    fn render(&self, with_secrets: bool) -> String {
        let mut raw = RawBundle {
            device_id: Some(self.device_id.clone()),
            broker_urls: Some(self.broker_urls.clone()),
            api_url: self.api_url.clone(),
            ca_pem: Some(self.ca_pem.clone()),
            ..RawBundle::default()
        };
        match &self.credentials {
            Credentials::Certificate { cert_pem, key_pem } => {
                raw.cert_pem = Some(cert_pem.clone());
                if with_secrets {
                    raw.key_pem = Some(key_pem.clone());
                }
            }
            Credentials::Token { token } => {
                if with_secrets {
                    raw.token = Some(token.clone());
                }
            }
        }
        let body = toml::to_string(&raw).unwrap_or_default();
        format!(
            "# devicecloud device bundle for '{}'. Keep it secret: it is the device's identity.\n{body}",
            self.device_id
        )
    }

    /// Writes the bundle (with secrets) to `path`, readable by its owner only (mode 0600).
    /// Replaces the file atomically if it exists.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), BundleError> {
        let path = path.as_ref();
        fsutil::write_atomic(path, self.to_toml().as_bytes(), 0o600).map_err(|source| {
            BundleError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

fn parse_raw(text: &str, origin: &str) -> Result<RawBundle, BundleError> {
    toml::from_str::<RawBundle>(text).map_err(|err| {
        let location = fsutil::toml_location(text, &err);
        BundleError::Invalid {
            origin: origin.to_string(),
            line: location.line,
            key: location.key,
            message: location.message,
        }
    })
}

struct Ctx<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Ctx<'_> {
    /// The line where `key` is assigned, if it is.
    fn line_of_key(&self, key: &str) -> Option<usize> {
        if key.is_empty() {
            return None;
        }
        self.text
            .lines()
            .position(|l| {
                let l = l.trim_start();
                l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .map(|i| i + 1)
    }

    fn invalid(&self, key: &str, message: &str) -> BundleError {
        let line = self.line_of_key(key);
        let message = if key.is_empty() || line.is_none() {
            message.to_string()
        } else {
            format!("key '{key}': {message}")
        };
        BundleError::Invalid {
            origin: self.origin.to_string(),
            line,
            key: (!key.is_empty()).then(|| key.to_string()),
            message,
        }
    }

    fn missing(&self, key: &str) -> BundleError {
        BundleError::Invalid {
            origin: self.origin.to_string(),
            line: None,
            key: Some(key.to_string()),
            message: format!("missing key '{key}'"),
        }
    }

    fn check_pem(&self, key: &str, pem: &str, label: &str) -> Result<(), BundleError> {
        // "PRIVATE KEY" also accepts "EC PRIVATE KEY" / "RSA PRIVATE KEY".
        let ok = pem.contains("-----BEGIN ") && pem.contains(&format!("{label}-----"));
        if ok {
            Ok(())
        } else {
            Err(self.invalid(
                key,
                &format!("expected a PEM block '-----BEGIN ...{label}-----'"),
            ))
        }
    }
}

fn finish(
    ctx: Ctx<'_>,
    device_id: Option<String>,
    broker_urls: Option<Vec<String>>,
    api_url: Option<String>,
    ca_pem: Option<String>,
    credentials: Credentials,
) -> Result<Bundle, BundleError> {
    let device_id = device_id.ok_or_else(|| ctx.missing("device_id"))?;
    crate::topics::validate_device_id(&device_id)
        .map_err(|e| ctx.invalid("device_id", &e.to_string()))?;
    let broker_urls = broker_urls.ok_or_else(|| ctx.missing("broker_urls"))?;
    if broker_urls.is_empty() {
        return Err(ctx.invalid(
            "broker_urls",
            "list at least one broker URL, e.g. \"mqtts://host:8883\"",
        ));
    }
    for url in &broker_urls {
        if !url.contains("://") {
            return Err(ctx.invalid(
                "broker_urls",
                &format!("'{url}' is not a URL like mqtts://host:8883"),
            ));
        }
    }
    if let Some(url) = &api_url
        && !url.contains("://")
    {
        return Err(ctx.invalid(
            "api_url",
            &format!("'{url}' is not a URL like https://host:8443"),
        ));
    }
    let ca_pem = ca_pem.ok_or_else(|| ctx.missing("ca_pem"))?;
    ctx.check_pem("ca_pem", &ca_pem, "CERTIFICATE")?;
    Ok(Bundle {
        device_id,
        broker_urls,
        api_url,
        ca_pem,
        credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n";

    fn sample(credentials: Credentials) -> Bundle {
        Bundle {
            device_id: "kitchen".into(),
            broker_urls: vec![
                "mqtts://host.example:8883".into(),
                "mqtts://10.0.0.2:8883".into(),
            ],
            api_url: Some("https://host.example:8443".into()),
            ca_pem: CERT.into(),
            credentials,
        }
    }

    #[test]
    fn round_trips_both_credential_kinds() {
        for creds in [
            Credentials::Certificate {
                cert_pem: CERT.into(),
                key_pem: KEY.into(),
            },
            Credentials::Token {
                token: "abc123".into(),
            },
        ] {
            let b = sample(creds);
            let text = b.to_toml();
            assert_eq!(Bundle::parse(&text, "x").unwrap(), b, "{text}");
        }
    }

    #[test]
    fn save_and_load_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kitchen.bundle");
        let b = sample(Credentials::Token {
            token: "t0k".into(),
        });
        b.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(Bundle::load(&path).unwrap(), b);
        let err = Bundle::load(dir.path().join("nope.bundle"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.bundle"), "{err}");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let text = "device_id = \"kitchen\"\nbroker_urls = [\"mqtts://h:8883\"]\nca_pem = \"x\"\ntoken = \"t\"\n";
        let err = Bundle::parse(text, "k.bundle").unwrap_err();
        let msg = err.to_string();
        assert_eq!(
            msg,
            "k.bundle:3: key 'ca_pem': expected a PEM block '-----BEGIN ...CERTIFICATE-----'"
        );
        assert!(
            matches!(err, BundleError::Invalid { key: Some(ref k), line: Some(3), .. } if k == "ca_pem")
        );

        let text = "device_id = \"kitchen\"\n\nbroker_urls = 5\n";
        let msg = Bundle::parse(text, "k.bundle").unwrap_err().to_string();
        assert!(msg.starts_with("k.bundle:3: "), "{msg}");

        let text = "device_id = \"kitchen\"\ncolour = \"red\"\n";
        let err = Bundle::parse(text, "k.bundle").unwrap_err();
        assert!(
            matches!(err, BundleError::Invalid { key: Some(ref k), line: Some(2), .. } if k == "colour"),
            "{err}"
        );

        let text =
            format!("broker_urls = [\"mqtts://h:8883\"]\nca_pem = '''{CERT}'''\ntoken = \"t\"\n");
        assert_eq!(
            Bundle::parse(&text, "k").unwrap_err().to_string(),
            "k: missing key 'device_id'"
        );

        let text = format!(
            "device_id = \"Bad/Id\"\nbroker_urls = [\"mqtts://h:8883\"]\nca_pem = '''{CERT}'''\ntoken = \"t\"\n"
        );
        let msg = Bundle::parse(&text, "k").unwrap_err().to_string();
        assert!(
            msg.starts_with("k:1: key 'device_id': invalid device id"),
            "{msg}"
        );

        let mut both = sample(Credentials::Token { token: "t".into() }).to_toml();
        both.push_str(&format!("cert_pem = '''{CERT}'''\nkey_pem = '''{KEY}'''\n"));
        assert!(
            Bundle::parse(&both, "k")
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );

        let none = sample(Credentials::Token { token: "t".into() }).to_public_toml();
        assert!(
            Bundle::parse(&none, "k")
                .unwrap_err()
                .to_string()
                .contains("no credentials")
        );
    }

    #[test]
    fn enrollment_bundle_carries_no_secret() {
        let full = sample(Credentials::Certificate {
            cert_pem: CERT.into(),
            key_pem: KEY.into(),
        });
        let public = full.to_public_toml();
        assert!(
            !public.contains("PRIVATE KEY") && !public.contains("key_pem"),
            "{public}"
        );
        let rebuilt =
            Bundle::from_enrollment(&public, "enrollment", CERT.into(), KEY.into()).unwrap();
        assert_eq!(rebuilt, full);
        let token = sample(Credentials::Token {
            token: "sekrit".into(),
        });
        assert!(!token.to_public_toml().contains("sekrit"));
        assert!(Bundle::from_enrollment(&token.to_toml(), "e", CERT.into(), KEY.into()).is_err());
        assert_eq!(format!("{:?}", token.credentials), "Token { .. }");
    }
}
