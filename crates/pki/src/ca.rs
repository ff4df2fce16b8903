//! The certificate authority: creation, loading, and signing.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

use crate::{
    CertInfo, PkiError,
    cert::{cert_info_der, pem_to_der, sha256_hex},
    files::{create_private_dir, write_private_file, write_public_file},
};

/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key inside the CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// Certificates are back-dated a little so that devices with a slightly slow clock accept them.
const BACKDATE: Duration = Duration::from_secs(3600);
/// The CA outlives every certificate it signs.
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// A freshly issued certificate together with its new private key (PEM, PKCS#8).
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub info: CertInfo,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// A certificate signed from a CSR; the private key stayed with the requester.
#[derive(Debug, Clone)]
pub struct SignedCert {
    pub cert_pem: String,
    pub info: CertInfo,
}

/// The server's CA: ECDSA P-256, files `ca.crt` and `ca.key` (0600) in its directory.
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("sha256", &self.sha256_hex())
            .finish()
    }
}

impl Ca {
    /// Creates a new CA in `dir` (created 0700 if missing). Refuses to overwrite an existing one.
    pub fn create(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() || key_path.exists() {
            return Err(PkiError::AlreadyExists(dir.to_path_buf()));
        }
        create_private_dir(dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "devicecloud");
        dn.push(
            DnType::CommonName,
            format!("devicecloud CA {}", hex::encode(rand::random::<[u8; 4]>())),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        // Key first: a crash in between leaves no certificate without its key.
        write_private_file(&key_path, key.serialize_pem().as_bytes())?;
        write_public_file(&cert_path, cert.pem().as_bytes())?;
        let cert_pem = cert.pem();
        Ok(Ca {
            dir: dir.to_path_buf(),
            cert_der: cert.der().to_vec(),
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA from `dir`, checking that the key belongs to the certificate.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !cert_path.exists() && !key_path.exists() {
            return Err(PkiError::NotFound(dir.to_path_buf()));
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| PkiError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let invalid = |path: &Path, what, reason: String| PkiError::InvalidFile {
            path: path.to_path_buf(),
            what,
            reason,
        };
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| invalid(&key_path, "private key", e.to_string()))?;
        let cert_der =
            pem_to_der(&cert_pem).map_err(|e| invalid(&cert_path, "certificate", e.to_string()))?;
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&cert_der)
            .map_err(|e| invalid(&cert_path, "certificate", e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid(
                &key_path,
                "private key",
                format!("it does not belong to {}", cert_path.display()),
            ));
        }
        if !parsed.is_ca() {
            return Err(invalid(
                &cert_path,
                "CA certificate",
                "it is not a CA (basicConstraints)".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.clone().into(), key)
            .map_err(|e| invalid(&cert_path, "CA certificate", e.to_string()))?;
        Ok(Ca {
            dir: dir.to_path_buf(),
            cert_pem,
            cert_der,
            issuer,
        })
    }

    /// Loads the CA from `dir`, creating it first if the directory has none. The flag says
    /// whether it was created.
    pub fn load_or_create(dir: &Path) -> Result<(Ca, bool), PkiError> {
        match Ca::load(dir) {
            Ok(ca) => Ok((ca, false)),
            Err(PkiError::NotFound(_)) => Ok((Ca::create(dir)?, true)),
            Err(e) => Err(e),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of `ca.crt`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Lowercase hex SHA-256 of the CA certificate's DER: what an enrolling agent pins
    /// (`--ca-sha256`).
    pub fn sha256_hex(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// A TLS server certificate for `hostnames` and `ips` (EKU serverAuth), with a new key.
    pub fn issue_server_cert(
        &self,
        hostnames: &[String],
        ips: &[IpAddr],
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        if hostnames.is_empty() && ips.is_empty() {
            return Err(PkiError::InvalidInput(
                "a server certificate needs at least one host name or IP address".into(),
            ));
        }
        let mut params = leaf_params(validity);
        let cn = hostnames
            .first()
            .cloned()
            .unwrap_or_else(|| ips[0].to_string());
        params.distinguished_name.push(DnType::CommonName, cn);
        for host in hostnames {
            if !is_dns_name(host) {
                return Err(PkiError::InvalidInput(format!(
                    "'{host}' is not a valid DNS name for a certificate"
                )));
            }
            let name = host.clone().try_into().map_err(|_| {
                PkiError::InvalidInput(format!(
                    "'{host}' is not a valid DNS name for a certificate"
                ))
            })?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            info: cert_info_der(cert.der())?,
        })
    }

    /// A device client certificate (CN = device id, EKU clientAuth), with a new key.
    pub fn issue_device_cert(
        &self,
        device_id: &str,
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let signed = self.sign_device_key(&key, device_id, validity)?;
        Ok(IssuedCert {
            cert_pem: signed.cert_pem,
            key_pem: key.serialize_pem(),
            info: signed.info,
        })
    }

    /// Signs a device's CSR. The CSR's signature must verify (proof that the requester holds
    /// the key); everything else it asks for (subject, extensions) is ignored: the certificate
    /// gets CN = `device_id` and EKU clientAuth, like one from [`Ca::issue_device_cert`].
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        device_id: &str,
        validity: Duration,
    ) -> Result<SignedCert, PkiError> {
        let (_, block) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
            .map_err(|e| PkiError::InvalidCsr(format!("not PEM: {e}")))?;
        if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
            return Err(PkiError::InvalidCsr(format!(
                "expected a CERTIFICATE REQUEST PEM block, found {}",
                block.label
            )));
        }
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&block.contents)
                .map_err(|e| PkiError::InvalidCsr(format!("cannot parse: {e}")))?;
        csr.verify_signature().map_err(|_| {
            PkiError::InvalidCsr("its signature does not verify with its own public key".into())
        })?;
        let spki =
            rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
                .map_err(|e| PkiError::InvalidCsr(format!("unsupported public key: {e}")))?;
        self.sign_device_key(&spki, device_id, validity)
    }

    fn sign_device_key(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        device_id: &str,
        validity: Duration,
    ) -> Result<SignedCert, PkiError> {
        if device_id.is_empty() || device_id.len() > 64 || device_id.contains(['/', '+', '#', '\0'])
        {
            return Err(PkiError::InvalidInput(format!(
                "'{device_id}' is not a valid device id"
            )));
        }
        let mut params = leaf_params(validity);
        params
            .distinguished_name
            .push(DnType::CommonName, device_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(SignedCert {
            cert_pem: cert.pem(),
            info: cert_info_der(cert.der())?,
        })
    }
}

/// Letters, digits and hyphens in dot-separated labels of at most 63 bytes (`*.` prefix allowed).
/// Whether `name` can go into a certificate as a DNS name: labels of letters, digits and
/// inner hyphens, at most 63 bytes each and 253 in all, optionally under a `*.` wildcard.
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn leaf_params(validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params
}

/// 128 random bits, positive and without a leading zero byte, so that its hex form is the same
/// however a parser normalises DER integers.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}
