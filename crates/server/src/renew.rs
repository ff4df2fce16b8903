//! The server's TLS certificate: issued by our CA for the configured names at first start,
//! reissued when the names change, and renewed before it expires. Files are replaced
//! atomically (key 0600) and the listeners' [`ReloadableTls`] pick the new one up for new
//! handshakes; established connections are unaffected.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use broker::tls::ReloadableTls;
use pki::{Ca, PkiError};

/// Where the server certificate lives inside the data directory.
pub const TLS_DIR: &str = "tls";
pub const SERVER_CERT_FILE: &str = "server.crt";
pub const SERVER_KEY_FILE: &str = "server.key";

/// How often the renewal task looks at the certificate.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct ServerCertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerCertPaths {
    pub fn in_data_dir(data_dir: &Path) -> ServerCertPaths {
        let dir = data_dir.join(TLS_DIR);
        ServerCertPaths {
            cert: dir.join(SERVER_CERT_FILE),
            key: dir.join(SERVER_KEY_FILE),
        }
    }
}

/// What the server certificate should look like.
#[derive(Debug, Clone)]
pub struct ServerCertSpec {
    pub hostnames: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub validity: Duration,
    pub renew_before: Duration,
}

/// Why [`ensure_server_cert`] (re)issued the certificate, if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issued {
    Kept,
    Created,
    NamesChanged,
    Renewed,
    Unreadable(String),
    OtherCa,
}

/// Makes sure a valid certificate for `spec` signed by `ca` is on disk; issues one if not.
pub fn ensure_server_cert(
    ca: &Ca,
    spec: &ServerCertSpec,
    paths: &ServerCertPaths,
) -> Result<Issued, PkiError> {
    let why = match std::fs::read_to_string(&paths.cert) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Issued::Created,
        Err(source) => {
            return Err(PkiError::Read {
                path: paths.cert.clone(),
                source,
            });
        }
        Ok(pem) => match pki::cert_info(&pem) {
            Err(err) => Issued::Unreadable(err.to_string()),
            Ok(info) => {
                let have: (BTreeSet<String>, BTreeSet<IpAddr>) = (
                    info.dns_names.iter().cloned().collect(),
                    info.ip_addresses.iter().copied().collect(),
                );
                let want: (BTreeSet<String>, BTreeSet<IpAddr>) = (
                    spec.hostnames.iter().cloned().collect(),
                    spec.ips.iter().copied().collect(),
                );
                if !signed_by(&pem, ca) {
                    Issued::OtherCa
                } else if !paths.key.exists() {
                    Issued::Unreadable(format!("{} is missing", paths.key.display()))
                } else if have != want {
                    Issued::NamesChanged
                } else if pki::needs_renewal(&pem, spec.renew_before)? {
                    Issued::Renewed
                } else {
                    return Ok(Issued::Kept);
                }
            }
        },
    };
    let issued = ca.issue_server_cert(&spec.hostnames, &spec.ips, spec.validity)?;
    // Key first: a reload between the two renames fails the key check and keeps the old
    // config; the next poll (or our explicit reload) sees both files.
    pki::write_private_file(&paths.key, issued.key_pem.as_bytes())?;
    pki::write_public_file(&paths.cert, issued.cert_pem.as_bytes())?;
    Ok(why)
}

/// Whether `cert_pem` chains to `ca` (signature check through webpki, as a client would do it).
fn signed_by(cert_pem: &str, ca: &Ca) -> bool {
    use rustls::{
        client::{WebPkiServerVerifier, danger::ServerCertVerifier},
        pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
    };
    let Ok(der) = CertificateDer::from_pem_slice(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok(info) = pki::cert_info(cert_pem) else {
        return false;
    };
    let mut roots = rustls::RootCertStore::empty();
    if roots
        .add(CertificateDer::from(ca.cert_der().to_vec()))
        .is_err()
    {
        return false;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(verifier) =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()
    else {
        return false;
    };
    let name = match (info.dns_names.first(), info.ip_addresses.first()) {
        (Some(dns), _) => ServerName::try_from(dns.clone()),
        (None, Some(ip)) => Ok(ServerName::from(*ip)),
        (None, None) => return false,
    };
    let Ok(name) = name else { return false };
    // Judge the signature, not the validity period: expiry is handled by the renewal margin.
    let at = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(info.not_before_unix.max(0)).unwrap_or(0) + 60,
    ));
    verifier
        .verify_server_cert(&der, &[], &name, &[], at)
        .is_ok()
}

/// Checks the certificate at start and then every [`CHECK_INTERVAL`]; when it was reissued,
/// reloads every listener's TLS configuration right away.
pub async fn renewal_task(
    ca: Arc<Ca>,
    spec: ServerCertSpec,
    paths: ServerCertPaths,
    tls: Vec<ReloadableTls>,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(interval) => {}
        }
        let (ca2, spec2, paths2) = (ca.clone(), spec.clone(), paths.clone());
        match tokio::task::spawn_blocking(move || ensure_server_cert(&ca2, &spec2, &paths2)).await {
            Ok(Ok(Issued::Kept)) => tracing::debug!("server certificate still valid"),
            Ok(Ok(why)) => {
                tracing::info!(
                    "server certificate reissued ({why:?}): {}",
                    paths.cert.display()
                );
                for tls in &tls {
                    if let Err(err) = tls.reload() {
                        tracing::error!("cannot load the renewed server certificate: {err}");
                    }
                }
            }
            Ok(Err(err)) => tracing::error!("server certificate renewal failed, will retry: {err}"),
            Err(err) => tracing::error!("server certificate renewal task failed: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_keeps_reissues_on_name_change_and_renews() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = Ca::load_or_create(&dir.path().join("ca")).unwrap();
        let paths = ServerCertPaths::in_data_dir(dir.path());
        std::fs::create_dir_all(paths.cert.parent().unwrap()).unwrap();
        let mut spec = ServerCertSpec {
            hostnames: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
            validity: Duration::from_secs(365 * 86400),
            renew_before: Duration::from_secs(30 * 86400),
        };
        assert_eq!(
            ensure_server_cert(&ca, &spec, &paths).unwrap(),
            Issued::Created
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&paths.key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(
            ensure_server_cert(&ca, &spec, &paths).unwrap(),
            Issued::Kept
        );
        spec.hostnames.push("iot.example.com".into());
        assert_eq!(
            ensure_server_cert(&ca, &spec, &paths).unwrap(),
            Issued::NamesChanged
        );
        let info = pki::cert_info(&std::fs::read_to_string(&paths.cert).unwrap()).unwrap();
        assert!(info.dns_names.contains(&"iot.example.com".to_string()));

        // A certificate that expires within the margin is renewed.
        let short = ca
            .issue_server_cert(&spec.hostnames, &spec.ips, Duration::from_secs(10 * 86400))
            .unwrap();
        std::fs::write(&paths.cert, &short.cert_pem).unwrap();
        std::fs::write(&paths.key, &short.key_pem).unwrap();
        assert_eq!(
            ensure_server_cert(&ca, &spec, &paths).unwrap(),
            Issued::Renewed
        );
        assert_eq!(
            ensure_server_cert(&ca, &spec, &paths).unwrap(),
            Issued::Kept
        );

        // A certificate from another CA (e.g. the CA directory was replaced) is reissued.
        let (other, _) = Ca::load_or_create(&dir.path().join("other-ca")).unwrap();
        let foreign = other
            .issue_server_cert(&spec.hostnames, &spec.ips, spec.validity)
            .unwrap();
        std::fs::write(&paths.cert, &foreign.cert_pem).unwrap();
        assert_eq!(
            ensure_server_cert(&ca, &spec, &paths).unwrap(),
            Issued::OtherCa
        );
    }
}
