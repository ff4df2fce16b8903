//! TLS for the broker's listeners (and the server's HTTPS port): a rustls server
//! configuration loaded from PEM files, optional client-certificate verification, and
//! [`ReloadableTls`], which picks up renewed certificates without a restart.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock, Weak},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig, ServerConnection,
    crypto::CryptoProvider,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::auth::ClientCert;

/// Where a TLS listener finds its certificate, key and (optionally) the CA its clients'
/// certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificate(s) that client certificates are verified against.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients without a certificate. Without it, a client may also
    /// connect without one (and then authenticate with a user name and password).
    pub require_client_cert: bool,
}

/// Less common knobs for [`ReloadableTls::load_with`].
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// ALPN protocols offered, e.g. `h2` and `http/1.1` for HTTPS. Empty for MQTT.
    pub alpn_protocols: Vec<Vec<u8>>,
    /// How often the files' modification times are checked; `None` disables polling.
    pub poll_interval: Option<Duration>,
    /// Reload when the process receives SIGHUP (Unix only).
    pub reload_on_sighup: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            alpn_protocols: Vec::new(),
            poll_interval: Some(Duration::from_secs(2)),
            reload_on_sighup: true,
        }
    }
}

/// Why a TLS configuration could not be built. Each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {what}", path.display())]
    Pem { path: PathBuf, what: String },
    #[error(
        "{} and {}: the private key does not belong to the certificate, or is not usable: {source}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: cannot build a client-certificate verifier from it: {what}", path.display())]
    ClientCa { path: PathBuf, what: String },
    #[error("the TLS provider rejected the configuration: {0}")]
    Provider(String),
    #[error("client certificate is not valid X.509: {0}")]
    ClientCert(String),
}

/// The crypto provider used everywhere in devicecloud: ring, passed explicitly so that
/// nothing depends on a process-wide default being installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate from a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem {
            path: path.to_owned(),
            what: format!("invalid PEM: {err}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate found (expected a \"-----BEGIN CERTIFICATE-----\" block)".into(),
        });
    }
    Ok(certs)
}

/// Reads the first private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| TlsError::Pem {
        path: path.to_owned(),
        what: match err {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no private key found (expected a \"-----BEGIN PRIVATE KEY-----\", \
                 \"BEGIN EC PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\" block)"
                    .into()
            }
            other => format!("invalid PEM: {other}"),
        },
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Builds a server configuration from the files named in `settings`.
pub fn server_config(settings: &TlsSettings, alpn: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let certs = load_certs(&settings.cert)?;
    let key = load_key(&settings.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Provider(err.to_string()))?;
    let builder = match &settings.client_ca {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(
            ca,
            settings.require_client_cert,
            provider,
        )?),
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::KeyMismatch {
                cert: settings.cert.clone(),
                key: settings.key.clone(),
                source,
            })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

fn client_verifier(
    ca: &Path,
    required: bool,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|err| TlsError::ClientCa {
            path: ca.to_owned(),
            what: format!("not a usable CA certificate: {err}"),
        })?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|err| TlsError::ClientCa {
        path: ca.to_owned(),
        what: err.to_string(),
    })
}

/// The identity of a verified client certificate (DER), for [`crate::auth::ConnectRequest`].
pub fn client_cert_identity(der: &[u8]) -> Result<ClientCert, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| TlsError::ClientCert(err.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Ok(ClientCert {
        common_name,
        fingerprint_sha256: hex_lower(&Sha256::digest(der)),
        serial_hex: hex_lower(cert.raw_serial()),
        not_after_unix: cert.validity().not_after.timestamp(),
        der: Arc::new(der.to_vec()),
    })
}

/// The client certificate that a finished handshake verified, if the client sent one.
pub fn peer_client_cert(conn: &ServerConnection) -> Option<ClientCert> {
    let leaf = conn.peer_certificates()?.first()?;
    match client_cert_identity(leaf) {
        Ok(cert) => Some(cert),
        Err(err) => {
            // rustls/webpki already verified it, so this would be an x509-parser limitation.
            tracing::warn!("verified client certificate could not be parsed: {err}");
            None
        }
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A TLS server configuration that follows its files: new handshakes use the newest good
/// configuration, connections that already completed theirs are unaffected. A reload that
/// fails (unreadable file, bad PEM, key not matching) is logged and the previous
/// configuration stays in use. Cheap to clone.
#[derive(Clone)]
pub struct ReloadableTls {
    inner: Arc<Inner>,
}

struct Inner {
    settings: TlsSettings,
    alpn: Vec<Vec<u8>>,
    current: RwLock<Arc<ServerConfig>>,
    /// The files' stamps when we last tried to load them (successfully or not), so that a
    /// broken file is reported once rather than at every poll.
    stamps: Mutex<Vec<Option<FileStamp>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: SystemTime,
    len: u64,
}

impl std::fmt::Debug for ReloadableTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableTls")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl ReloadableTls {
    /// Loads the files and, when called inside a Tokio runtime, starts watching them (poll
    /// every 2 s, and SIGHUP) with [`TlsOptions::default`].
    pub fn load(settings: TlsSettings) -> Result<ReloadableTls, TlsError> {
        Self::load_with(settings, TlsOptions::default())
    }

    /// Like [`ReloadableTls::load`] with explicit options.
    pub fn load_with(
        settings: TlsSettings,
        options: TlsOptions,
    ) -> Result<ReloadableTls, TlsError> {
        let stamps = stamps(&settings);
        let config = server_config(&settings, &options.alpn_protocols)?;
        let tls = ReloadableTls {
            inner: Arc::new(Inner {
                settings,
                alpn: options.alpn_protocols.clone(),
                current: RwLock::new(Arc::new(config)),
                stamps: Mutex::new(stamps),
            }),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            tls.spawn_watcher(options.poll_interval, options.reload_on_sighup);
        }
        Ok(tls)
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.inner.settings
    }

    /// The configuration for the next handshake.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// An acceptor for one new connection, using the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server_config())
    }

    /// Loads the files again. On error the previous configuration stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = stamps(&self.inner.settings);
        *self.inner.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
        let config = server_config(&self.inner.settings, &self.inner.alpn)?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// Reloads if any file's modification time or size changed since the last attempt.
    /// Returns whether a reload was attempted.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.inner.settings);
        if *self.inner.stamps.lock().unwrap_or_else(|p| p.into_inner()) == now {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Reloads and logs the outcome (the watcher's and SIGHUP's entry point).
    fn reload_logged(&self, why: &str, changed_only: bool) {
        let result = if changed_only {
            self.reload_if_changed()
        } else {
            self.reload().map(|()| true)
        };
        match result {
            Ok(true) => tracing::info!(
                "reloaded TLS certificate {} ({why})",
                self.inner.settings.cert.display()
            ),
            Ok(false) => {}
            Err(err) => tracing::error!(
                "TLS reload failed ({why}), keeping the previous certificate: {err}"
            ),
        }
    }

    /// Polling the modification times is deliberate: it costs three `stat` calls every few
    /// seconds, works for any way the files get replaced (rename, copy, bind-mounted
    /// secrets, certbot hooks) and needs no inotify dependency. The task holds only a weak
    /// reference and ends when the last clone of this `ReloadableTls` is dropped.
    fn spawn_watcher(&self, poll: Option<Duration>, sighup: bool) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        if let Some(period) = poll {
            let weak = weak.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await;
                loop {
                    ticker.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let tls = ReloadableTls { inner };
                    // stat + PEM parsing is quick but blocking; keep it off the reactor.
                    let _ = tokio::task::spawn_blocking(move || {
                        tls.reload_logged("files changed", true)
                    })
                    .await;
                }
            });
        }
        #[cfg(unix)]
        if sighup {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            let Some(inner) = weak.upgrade() else { return };
                            let tls = ReloadableTls { inner };
                            let _ = tokio::task::spawn_blocking(move || {
                                tls.reload_logged("SIGHUP", false)
                            })
                            .await;
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!("cannot listen for SIGHUP, TLS reload on signal disabled: {err}")
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (sighup, weak);
    }
}

fn stamps(settings: &TlsSettings) -> Vec<Option<FileStamp>> {
    [
        Some(&settings.cert),
        Some(&settings.key),
        settings.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok()?,
            len: meta.len(),
        })
    })
    .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    /// A throw-away CA in a temporary directory, issuing certificates for `localhost`.
    pub(crate) struct Pki {
        pub(crate) dir: tempfile::TempDir,
        issuer: rcgen::Issuer<'static, KeyPair>,
    }

    impl Pki {
        pub(crate) fn new() -> Pki {
            let ca_key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "test ca");
            let ca = params.self_signed(&ca_key).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            Pki {
                dir,
                issuer: rcgen::Issuer::new(params, ca_key),
            }
        }
        pub(crate) fn issue(&self, cn: &str, name: &str) -> (PathBuf, PathBuf) {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            let cert_path = self.dir.path().join(format!("{name}.pem"));
            let key_path = self.dir.path().join(format!("{name}.key"));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            (cert_path, key_path)
        }
        pub(crate) fn settings(&self, cert: PathBuf, key: PathBuf) -> TlsSettings {
            TlsSettings {
                cert,
                key,
                client_ca: Some(self.dir.path().join("ca.pem")),
                require_client_cert: true,
            }
        }
    }

    #[test]
    fn loads_pem_and_rejects_bad_files_naming_them() {
        let pki = Pki::new();
        let (cert, key) = pki.issue("broker", "server");
        assert!(server_config(&pki.settings(cert.clone(), key.clone()), &[]).is_ok());

        let missing = pki.dir.path().join("nope.pem");
        let err = server_config(&pki.settings(missing.clone(), key.clone()), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope.pem") && err.contains("cannot read"),
            "{err}"
        );

        let garbage = pki.dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello, not a certificate\n").unwrap();
        let err = server_config(&pki.settings(garbage.clone(), key.clone()), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("garbage.pem") && err.contains("no certificate found"),
            "{err}"
        );
        let err = server_config(&pki.settings(cert.clone(), garbage), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("garbage.pem") && err.contains("no private key"),
            "{err}"
        );

        let (_, other_key) = pki.issue("other", "other");
        let err = server_config(&pki.settings(cert, other_key), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not belong"), "{err}");
    }

    #[test]
    fn client_cert_identity_has_cn_serial_and_fingerprint() {
        let pki = Pki::new();
        let (cert, _) = pki.issue("kitchen", "device");
        let der = load_certs(&cert).unwrap().remove(0);
        let id = client_cert_identity(&der).unwrap();
        assert_eq!(id.common_name.as_deref(), Some("kitchen"));
        assert_eq!(id.fingerprint_sha256.len(), 64);
        assert_eq!(id.fingerprint_sha256, hex_lower(&Sha256::digest(&der)));
        assert!(!id.serial_hex.is_empty());
        assert!(id.not_after_unix > 1_700_000_000);
        assert!(client_cert_identity(b"junk").is_err());
    }

    #[test]
    fn failed_reload_keeps_the_old_config_and_good_reload_swaps_it() {
        let pki = Pki::new();
        let (cert, key) = pki.issue("broker", "server");
        let tls = ReloadableTls::load_with(
            pki.settings(cert.clone(), key.clone()),
            TlsOptions {
                poll_interval: None,
                reload_on_sighup: false,
                ..TlsOptions::default()
            },
        )
        .unwrap();
        let first = tls.server_config();
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed yet");

        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = tls.reload_if_changed().unwrap_err().to_string();
        assert!(err.contains("server.pem"), "{err}");
        assert!(
            Arc::ptr_eq(&first, &tls.server_config()),
            "bad reload must keep the old config"
        );
        assert!(
            !tls.reload_if_changed().unwrap(),
            "a broken file is reported once, not at every poll"
        );

        // A renewed certificate for the same key.
        let (new_cert, new_key) = pki.issue("broker-renewed", "renewed");
        std::fs::copy(&new_cert, &cert).unwrap();
        std::fs::copy(&new_key, &key).unwrap();
        assert!(tls.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(&first, &tls.server_config()));
    }
}
