//! Enrollment against a small HTTPS endpoint that signs the device's request.

use std::sync::Arc;

use agent::enroll::{EnrollError, enroll};
use proto::bundle::Credentials;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::Pki;

/// Serves `POST /api/v1/enroll` on 127.0.0.1 with a certificate chain that includes the CA.
async fn server(pki: Arc<Pki>) -> u16 {
    let (cert, key) = pki.issue("localhost");
    let chain: Vec<_> = rustls_pki_types::pem::PemObject::pem_slice_iter(
        format!("{cert}{}", pki.ca_pem).as_bytes(),
    )
    .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()
    .unwrap();
    let key =
        <rustls_pki_types::PrivateKeyDer as rustls_pki_types::pem::PemObject>::from_pem_slice(
            key.as_bytes(),
        )
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let pki = pki.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let body = loop {
                    let mut chunk = [0u8; 4096];
                    let n = tls.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "request ended early");
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            assert!(head.starts_with("POST /api/v1/enroll "), "{head}");
                            break body.to_string();
                        }
                    }
                };
                let req: serde_json::Value = serde_json::from_str(&body).unwrap();
                let (status, answer) = if req["code"] == "good-code" {
                    let csr = rcgen::CertificateSigningRequestParams::from_pem(
                        req["csr_pem"].as_str().unwrap(),
                    )
                    .unwrap();
                    let cert = csr.signed_by(&pki.issuer).unwrap();
                    let bundle = format!(
                        "device_id = \"kitchen\"\nbroker_urls = [\"mqtts://127.0.0.1:8883\"]\nca_pem = {:?}\n",
                        pki.ca_pem
                    );
                    (
                        "200 OK",
                        serde_json::json!({"bundle": bundle, "cert_pem": cert.pem()}),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        serde_json::json!({"error": "invalid enrollment code"}),
                    )
                };
                let body = answer.to_string();
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn enrolls_with_a_pinned_ca() {
    let pki = Arc::new(Pki::new());
    let pin = hex::encode(Sha256::digest(&pki.ca_der));
    let port = server(pki.clone()).await;
    let url = format!("https://localhost:{port}");

    let bundle = enroll(&url, "good-code", &pin).await.unwrap();
    assert_eq!(bundle.device_id, "kitchen");
    assert_eq!(bundle.ca_pem, pki.ca_pem);
    let Credentials::Certificate { cert_pem, key_pem } = &bundle.credentials else {
        panic!("a certificate bundle")
    };
    assert!(cert_pem.contains("BEGIN CERTIFICATE") && key_pem.contains("PRIVATE KEY"));

    let refused = enroll(&url, "used-code", &pin).await.unwrap_err();
    assert!(matches!(refused, EnrollError::CodeRefused), "{refused}");

    let other = hex::encode(Sha256::digest(b"another ca"));
    let err = enroll(&url, "good-code", &other)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("pinned"), "{err}");
}
