//! `devicecloud agent enroll URL CODE --ca-sha256 HEX`: the device makes its own key pair,
//! sends a certificate request with the one-time code, and gets back its certificate and
//! bundle. The private key never leaves the device.
//!
//! The device has no CA yet, so it pins the CA by the SHA-256 of its DER (printed by
//! `devicecloud device add --enroll`): the server must present a chain that contains that CA,
//! and its certificate must verify against it for the URL's host name.

use std::sync::Arc;

use proto::bundle::Bundle;
use rustls::{
    DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "--ca-sha256 must be 64 hex digits (the SHA-256 of the CA certificate, as printed by `devicecloud device add --enroll`), got '{0}'"
    )]
    BadPin(String),
    #[error("enrollment needs an https:// URL (the code must not travel in clear), got '{0}'")]
    NotHttps(String),
    #[error("cannot make the device key or request: {0}")]
    Key(String),
    #[error("cannot reach {url}: {message}")]
    Http { url: String, message: String },
    #[error(
        "the server refused the enrollment code (wrong, already used or expired); make a new one with `devicecloud device add NAME --enroll`"
    )]
    CodeRefused,
    #[error("the server answered {status}: {body}")]
    Server { status: u16, body: String },
    #[error("the server's answer is unusable: {0}")]
    BadResponse(String),
}

#[derive(Serialize)]
struct EnrollRequest<'a> {
    code: &'a str,
    csr_pem: &'a str,
}

#[derive(Deserialize)]
struct EnrollResponse {
    bundle: String,
    cert_pem: String,
}

/// Parses a SHA-256 given as hex, with or without `:` separators.
pub fn parse_pin(hex_pin: &str) -> Result<[u8; 32], EnrollError> {
    let clean: String = hex_pin.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&clean).map_err(|_| EnrollError::BadPin(hex_pin.into()))?;
    bytes
        .try_into()
        .map_err(|_| EnrollError::BadPin(hex_pin.into()))
}

/// Checks the server's chain against a pinned CA.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    pub fn new(pin: [u8; 32]) -> PinnedCaVerifier {
        PinnedCaVerifier {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server did not present the CA with the pinned SHA-256 (wrong --ca-sha256, or not the devicecloud server)".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA is unusable: {e}")))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A fresh key pair and a CSR for it (CN = `device`; the server puts the real device id in).
pub fn key_and_csr() -> Result<(String, String), EnrollError> {
    let key = rcgen::KeyPair::generate().map_err(|e| EnrollError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "device");
    let csr = params
        .serialize_request(&key)
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    let csr_pem = csr.pem().map_err(|e| EnrollError::Key(e.to_string()))?;
    Ok((key.serialize_pem(), csr_pem))
}

/// Enrolls with the server at `api_url` and returns the device's bundle (with its own key).
pub async fn enroll(api_url: &str, code: &str, ca_sha256: &str) -> Result<Bundle, EnrollError> {
    let pin = parse_pin(ca_sha256)?;
    if !api_url.starts_with("https://") {
        return Err(EnrollError::NotHttps(api_url.into()));
    }
    let (key_pem, csr_pem) = key_and_csr()?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| EnrollError::Key(e.to_string()))?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(pin)))
    .with_no_client_auth();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| EnrollError::Http {
            url: api_url.into(),
            message: e.to_string(),
        })?;
    let url = format!("{}/api/v1/enroll", api_url.trim_end_matches('/'));
    let response = http
        .post(&url)
        .json(&EnrollRequest {
            code: code.trim(),
            csr_pem: &csr_pem,
        })
        .send()
        .await
        .map_err(|e| EnrollError::Http {
            url: url.clone(),
            message: error_chain(&e),
        })?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(EnrollError::CodeRefused);
    }
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(EnrollError::Server {
            status: status.as_u16(),
            body: body.chars().take(500).collect(),
        });
    }
    let answer: EnrollResponse = response
        .json()
        .await
        .map_err(|e| EnrollError::BadResponse(e.to_string()))?;
    let bundle = Bundle::from_enrollment(
        &answer.bundle,
        "enrollment response",
        answer.cert_pem,
        key_pem,
    )
    .map_err(|e| EnrollError::BadResponse(e.to_string()))?;
    // The bundle's CA must be the one we pinned: it is what the agent will trust from now on.
    let ca_matches = CertificateDer::pem_slice_iter(bundle.ca_pem.as_bytes())
        .flatten()
        .any(|c| Sha256::digest(c.as_ref()).as_slice() == pin);
    if !ca_matches {
        return Err(EnrollError::BadResponse(
            "the bundle's CA is not the pinned one".into(),
        ));
    }
    Ok(bundle)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_pin(&hex64).unwrap(), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        assert!(
            parse_pin("abcd")
                .unwrap_err()
                .to_string()
                .contains("64 hex digits")
        );
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn csr_is_a_pem_request() {
        let (key, csr) = key_and_csr().unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    }

    #[tokio::test]
    async fn refuses_plain_http() {
        let err = enroll("http://127.0.0.1:1", "code", &"00".repeat(32))
            .await
            .unwrap_err();
        assert!(matches!(err, EnrollError::NotHttps(_)));
    }
}
