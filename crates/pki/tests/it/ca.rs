//! The CA's certificates verified the way the broker will verify them: with rustls' webpki.

use std::{net::IpAddr, sync::Arc, time::Duration};

use pki::{Ca, PkiError, cert_info, generate_csr, needs_renewal};
use rustls::{
    RootCertStore,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

fn decode_base64(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn client_verifier(ca: &Ca) -> Arc<dyn ClientCertVerifier> {
    let mut roots = RootCertStore::empty();
    roots.add(der(ca.cert_pem())).unwrap();
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap()
}

fn server_verifier(ca: &Ca) -> Arc<WebPkiServerVerifier> {
    let mut roots = RootCertStore::empty();
    roots.add(der(ca.cert_pem())).unwrap();
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap()
}

#[test]
fn device_cert_verifies_as_client_cert_against_its_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::create(&dir.path().join("ca")).unwrap();
    let other = Ca::create(&dir.path().join("other")).unwrap();
    let issued = ca.issue_device_cert("kitchen", 365 * DAY).unwrap();
    assert_eq!(issued.info.common_name.as_deref(), Some("kitchen"));
    assert!(!issued.info.is_ca);
    assert_eq!(issued.info, cert_info(&issued.cert_pem).unwrap());
    assert!(issued.key_pem.contains("PRIVATE KEY"));

    let now = UnixTime::now();
    client_verifier(&ca)
        .verify_client_cert(&der(&issued.cert_pem), &[], now)
        .expect("verifies against its CA");
    let foreign = other.issue_device_cert("kitchen", 365 * DAY).unwrap();
    assert!(
        client_verifier(&ca)
            .verify_client_cert(&der(&foreign.cert_pem), &[], now)
            .is_err()
    );
    // A client certificate is not a server certificate (EKU).
    let name = ServerName::try_from("kitchen").unwrap();
    assert!(
        server_verifier(&ca)
            .verify_server_cert(&der(&issued.cert_pem), &[], &name, &[], now)
            .is_err()
    );
}

#[test]
fn server_cert_has_sans_and_server_eku() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::create(dir.path()).unwrap();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let issued = ca
        .issue_server_cert(&["localhost".into(), "pi.example".into()], &[ip], 90 * DAY)
        .unwrap();
    assert_eq!(
        issued.info.dns_names,
        vec!["localhost".to_string(), "pi.example".to_string()]
    );
    assert_eq!(issued.info.ip_addresses, vec![ip]);
    let now = UnixTime::now();
    let verifier = server_verifier(&ca);
    for name in ["localhost", "pi.example", "127.0.0.1"] {
        let name = ServerName::try_from(name).unwrap();
        verifier
            .verify_server_cert(&der(&issued.cert_pem), &[], &name, &[], now)
            .expect("valid for its names");
    }
    let wrong = ServerName::try_from("evil.example").unwrap();
    assert!(
        verifier
            .verify_server_cert(&der(&issued.cert_pem), &[], &wrong, &[], now)
            .is_err()
    );
    // Not usable as a client certificate.
    assert!(
        client_verifier(&ca)
            .verify_client_cert(&der(&issued.cert_pem), &[], now)
            .is_err()
    );
    assert!(matches!(
        ca.issue_server_cert(&[], &[], DAY),
        Err(PkiError::InvalidInput(_))
    ));
    assert!(
        ca.issue_server_cert(&["bad name!".into()], &[], DAY)
            .is_err()
    );
}

#[test]
fn csr_signing_forces_the_device_id_and_checks_the_signature() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::create(dir.path()).unwrap();
    let (csr_pem, key_pem) = generate_csr("admin").unwrap();
    assert!(key_pem.contains("PRIVATE KEY"));
    let signed = ca.sign_csr(&csr_pem, "sensor-1", 365 * DAY).unwrap();
    assert_eq!(
        signed.info.common_name.as_deref(),
        Some("sensor-1"),
        "CN comes from the registry, not the CSR"
    );
    client_verifier(&ca)
        .verify_client_cert(&der(&signed.cert_pem), &[], UnixTime::now())
        .unwrap();
    // The certificate carries the CSR's key.
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let cert_der = der(&signed.cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );

    // Tampering with the CSR breaks its signature.
    let mut body = decode_base64(
        &csr_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>(),
    );
    let n = body.len();
    body[n / 2] ^= 0x01;
    let tampered = pem_encode("CERTIFICATE REQUEST", &body);
    let err = ca.sign_csr(&tampered, "sensor-1", DAY).unwrap_err();
    assert!(matches!(err, PkiError::InvalidCsr(_)), "{err}");
    assert!(ca.sign_csr("garbage", "x", DAY).is_err());
    assert!(
        ca.sign_csr(ca.cert_pem(), "x", DAY).is_err(),
        "a certificate is not a CSR"
    );
    assert!(
        ca.sign_csr(&csr_pem, "a/b", DAY).is_err(),
        "device ids with topic characters are refused"
    );
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                b64.push(ALPHABET[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[test]
fn ca_persists_with_private_key_mode_and_refuses_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let (ca, created) = Ca::load_or_create(&ca_dir).unwrap();
    assert!(created);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ca_dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(&ca_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
    assert!(matches!(
        Ca::create(&ca_dir),
        Err(PkiError::AlreadyExists(_))
    ));
    let (loaded, created) = Ca::load_or_create(&ca_dir).unwrap();
    assert!(!created);
    assert_eq!(loaded.sha256_hex(), ca.sha256_hex());
    assert_eq!(loaded.sha256_hex().len(), 64);
    // A certificate issued by the reloaded CA verifies against the original CA certificate.
    let issued = loaded.issue_device_cert("d", DAY).unwrap();
    client_verifier(&ca)
        .verify_client_cert(&der(&issued.cert_pem), &[], UnixTime::now())
        .unwrap();

    // A key that does not belong to the certificate is refused with the file named.
    let other = Ca::create(&dir.path().join("other")).unwrap();
    std::fs::copy(other.dir().join("ca.key"), ca_dir.join("ca.key")).unwrap();
    let err = Ca::load(&ca_dir).unwrap_err().to_string();
    assert!(
        err.contains("ca.key") && err.contains("does not belong"),
        "{err}"
    );
    assert!(matches!(
        Ca::load(&dir.path().join("none")),
        Err(PkiError::NotFound(_))
    ));
}

#[test]
fn cert_info_and_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::create(dir.path()).unwrap();
    let short = ca.issue_device_cert("d", 10 * DAY).unwrap();
    assert!(needs_renewal(&short.cert_pem, 30 * DAY).unwrap());
    assert!(!needs_renewal(&short.cert_pem, DAY).unwrap());
    let a = ca.issue_device_cert("d", DAY).unwrap();
    let b = ca.issue_device_cert("d", DAY).unwrap();
    assert_ne!(a.info.serial_hex, b.info.serial_hex);
    assert_ne!(a.info.fingerprint_sha256, b.info.fingerprint_sha256);
    assert_eq!(
        a.info.serial_hex.len(),
        32,
        "128-bit serial without a leading zero byte"
    );
    let info = cert_info(ca.cert_pem()).unwrap();
    assert!(info.is_ca);
    assert!(info.not_after_unix - info.not_before_unix > 10 * 365 * 24 * 3600);
    assert!(cert_info("not a cert").is_err());
}
