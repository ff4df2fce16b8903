use std::sync::Arc;

use client::{ClientError, ClientOptions, QoS};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::fake::{self, Config};

struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}

#[tokio::test]
async fn mqtts_connects_with_the_right_ca_and_fails_with_another() {
    let good = pki();
    let (port, _seen) = fake::start(Config {
        tls: Some(good.server.clone()),
        ..Config::default()
    })
    .await;
    let mut o = ClientOptions::new(format!("mqtts://127.0.0.1:{port}"), "tls");
    o.tls = Some(Arc::new(client::tls_config(&good.ca_pem, None).unwrap()));
    let (c, _events) = client::connect(&o).await.unwrap();
    c.publish("a", "b", QoS::AtLeastOnce, false).await.unwrap();

    let other = pki();
    o.tls = Some(Arc::new(client::tls_config(&other.ca_pem, None).unwrap()));
    let err = client::connect(&o).await.err().unwrap();
    assert!(matches!(err, ClientError::TlsHandshake { .. }), "{err}");

    o.tls = None;
    assert!(matches!(
        client::connect(&o).await.err().unwrap(),
        ClientError::TlsRequired(_)
    ));
}

#[test]
fn tls_config_reports_bad_pem() {
    assert!(matches!(
        client::tls_config("not pem", None),
        Err(ClientError::TlsConfig(_))
    ));
    let good = pki();
    let err = client::tls_config(&good.ca_pem, Some(("", ""))).unwrap_err();
    assert!(err.to_string().contains("client certificate"), "{err}");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["dev".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    assert!(client::tls_config(&good.ca_pem, Some((&cert.pem(), &key.serialize_pem()))).is_ok());
}
