//! Reading certificates: identity, expiry, fingerprints.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::PkiError;

/// What the registry and the CLI need to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject common name; devicecloud device certificates carry the device id here.
    pub common_name: Option<String>,
    /// Serial number, lowercase hex, without leading zero bytes.
    pub serial_hex: String,
    /// Lowercase hex SHA-256 of the DER certificate: what revocation is keyed on.
    pub fingerprint_sha256: String,
    /// Seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// Seconds since the Unix epoch.
    pub not_after_unix: i64,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
    pub is_ca: bool,
}

/// Lowercase hex SHA-256 of `bytes` (use it on DER, not PEM).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The DER of the first certificate in `pem`.
pub(crate) fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| PkiError::InvalidCertificate(format!("not a PEM certificate: {e}")))?;
    if block.label != "CERTIFICATE" {
        return Err(PkiError::InvalidCertificate(format!(
            "expected a CERTIFICATE PEM block, found {}",
            block.label
        )));
    }
    Ok(block.contents)
}

/// Reads identity and validity from a PEM certificate.
pub fn cert_info(pem: &str) -> Result<CertInfo, PkiError> {
    cert_info_der(&pem_to_der(pem)?)
}

/// Reads identity and validity from a DER certificate.
pub fn cert_info_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::InvalidCertificate(format!("cannot parse X.509: {e}")))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let serial = cert.raw_serial();
    let first_nonzero = serial
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        ip_addresses.push(std::net::IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        ip_addresses.push(std::net::IpAddr::from(a));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        common_name,
        serial_hex: hex::encode(&serial[first_nonzero..]),
        fingerprint_sha256: sha256_hex(der),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        dns_names,
        ip_addresses,
        is_ca: cert.is_ca(),
    })
}

/// Whether a certificate expires within `within` from now (or has already expired): time to
/// issue a new one.
pub fn needs_renewal(cert_pem: &str, within: Duration) -> Result<bool, PkiError> {
    let info = cert_info(cert_pem)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(info.not_after_unix - now <= within.as_secs() as i64)
}

/// Makes a fresh ECDSA P-256 key and a CSR for `common_name` (the device id): what a device
/// does during enrollment, so that its private key never leaves it. Returns `(csr_pem, key_pem)`.
pub fn generate_csr(common_name: &str) -> Result<(String, String), PkiError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}
