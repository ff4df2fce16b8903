use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::ClientError;

/// A rustls client configuration (ring provider) that trusts the CA certificates in `ca_pem`
/// and, given `client_auth = Some((cert_chain_pem, key_pem))`, presents that certificate.
pub fn tls_config(
    ca_pem: &str,
    client_auth: Option<(&str, &str)>,
) -> Result<ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| ClientError::TlsConfig(format!("CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::TlsConfig(format!("CA certificate rejected: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(ClientError::TlsConfig(
            "CA PEM contains no certificate".into(),
        ));
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::TlsConfig(e.to_string()))?
            .with_root_certificates(roots);
    match client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::TlsConfig(format!("client certificate PEM: {e}")))?;
            if chain.is_empty() {
                return Err(ClientError::TlsConfig(
                    "client certificate PEM contains no certificate".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| ClientError::TlsConfig(format!("client key PEM: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::TlsConfig(format!("client certificate/key: {e}")))
        }
    }
}
