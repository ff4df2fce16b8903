//! The web port's TLS: the listener's [`ReloadableTls`] (reloaded when the server certificate
//! is renewed), with our CA certificate appended to the chain it presents. A device enrolling
//! knows nothing but the CA's SHA-256 (`--ca-sha256`): it finds the CA in the presented chain,
//! checks it against the pin, and verifies the server certificate with it.

use std::sync::{Arc, Mutex};

use broker::tls::ReloadableTls;
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::CertificateDer;
use tokio_rustls::TlsAcceptor;

#[derive(Debug)]
struct WithCa {
    inner: Arc<dyn ResolvesServerCert>,
    ca: CertificateDer<'static>,
}

impl ResolvesServerCert for WithCa {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.inner.resolve(hello)?;
        if key.cert.contains(&self.ca) {
            return Some(key);
        }
        let mut chain = key.cert.clone();
        chain.push(self.ca.clone());
        Some(Arc::new(CertifiedKey {
            cert: chain,
            key: key.key.clone(),
            ocsp: key.ocsp.clone(),
        }))
    }
}

/// Hands out acceptors for the current configuration, rebuilt only when it was reloaded.
pub struct WebTls {
    tls: ReloadableTls,
    ca: CertificateDer<'static>,
    cached: Mutex<Option<(Arc<ServerConfig>, TlsAcceptor)>>,
}

impl WebTls {
    pub fn new(tls: ReloadableTls, ca_der: &[u8]) -> WebTls {
        WebTls {
            tls,
            ca: CertificateDer::from(ca_der.to_vec()),
            cached: Mutex::new(None),
        }
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        let base = self.tls.server_config();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((config, acceptor)) = cached.as_ref()
            && Arc::ptr_eq(config, &base)
        {
            return acceptor.clone();
        }
        let mut config = (*base).clone();
        config.cert_resolver = Arc::new(WithCa {
            inner: config.cert_resolver.clone(),
            ca: self.ca.clone(),
        });
        let acceptor = TlsAcceptor::from(Arc::new(config));
        *cached = Some((base, acceptor.clone()));
        acceptor
    }
}
