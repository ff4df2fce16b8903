//! devicecloud's certificate authority: one ECDSA P-256 CA per server that signs the server's
//! TLS certificate and every device's client certificate (CN = device id).

mod ca;
mod cert;
mod files;

pub use ca::{CA_CERT_FILE, CA_KEY_FILE, Ca, IssuedCert, SignedCert, is_dns_name};
pub use cert::{CertInfo, cert_info, generate_csr, needs_renewal, sha256_hex};
pub use files::{write_private_file, write_public_file};

use std::path::PathBuf;

/// Everything that can go wrong in the PKI. Messages say which file or input and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "a CA already exists in {0}; load it instead of creating a new one (a new CA would invalidate every device certificate)"
    )]
    AlreadyExists(PathBuf),
    #[error("no CA in {0}: create one first (the server does so on its first start)")]
    NotFound(PathBuf),
    #[error("{path} is not a valid {what}: {reason}")]
    InvalidFile {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}
