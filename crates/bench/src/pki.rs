//! A throwaway CA and server certificate (ECDSA P-256) for the TLS scenario.

use std::{path::Path, sync::Arc};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub client: Arc<rustls::ClientConfig>,
}

impl Pki {
    pub fn generate() -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "bench CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let cert = params.signed_by(&key, &issuer)?;
        let ca_pem = ca.pem();
        let mut client = client::tls_config(&ca_pem, None)?;
        // Measure full handshakes: no session resumption.
        client.resumption = rustls::client::Resumption::disabled();
        let client = Arc::new(client);
        Ok(Pki {
            ca_pem,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            client,
        })
    }

    /// Writes ca.pem, cert.pem and key.pem into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        for (name, pem) in [
            ("ca.pem", &self.ca_pem),
            ("cert.pem", &self.cert_pem),
            ("key.pem", &self.key_pem),
        ] {
            std::fs::write(dir.join(name), pem).with_context(|| format!("writing {name}"))?;
        }
        Ok(())
    }
}
