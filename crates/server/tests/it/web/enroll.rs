//! Enrollment: an admin adds a device with a one-time code; the device spends it once.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{Web, json_of};

#[tokio::test]
async fn a_code_enrolls_once_and_only_once() {
    let web = Web::start().await;
    let (status, added) = json_of(
        web.req(Method::POST, "/api/v1/devices", &web.admin)
            .json(&json!({"id": "kitchen", "credential": "enroll"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let code = added["code"].as_str().unwrap().to_string();
    let command = added["enroll_command"].as_str().unwrap();
    assert!(
        command.starts_with("devicecloud agent enroll https://"),
        "{command}"
    );
    assert!(
        command.contains(&code) && command.contains(&web.server.ca_fingerprint()),
        "{command}"
    );
    assert!(added["expires_at"].as_i64().unwrap() > store::now_ms());

    let (csr_pem, key_pem) = pki::generate_csr("kitchen").unwrap();
    // A broken CSR is refused and does not spend the code.
    let (status, body) = json_of(
        web.http
            .post(web.url("/api/v1/enroll"))
            .json(&json!({"code": code, "csr_pem": "junk"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("csr_pem")),
        "{body}"
    );

    // Lower case and without dashes works too (people type codes).
    let typed = code.replace('-', "").to_lowercase();
    let (status, body) = json_of(
        web.http
            .post(web.url("/api/v1/enroll"))
            .json(&json!({"code": typed, "csr_pem": csr_pem}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bundle = proto::bundle::Bundle::from_enrollment(
        body["bundle"].as_str().unwrap(),
        "enrollment response",
        body["cert_pem"].as_str().unwrap().to_string(),
        key_pem,
    )
    .unwrap();
    assert_eq!(bundle.device_id, "kitchen");
    assert_eq!(bundle.ca_pem, web.server.ctx.ca.cert_pem());
    assert!(
        !bundle.broker_urls.is_empty() && bundle.broker_urls[0].starts_with("mqtts://"),
        "{:?}",
        bundle.broker_urls
    );
    let info = pki::cert_info(body["cert_pem"].as_str().unwrap()).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("kitchen"));
    let device = web
        .server
        .ctx
        .store
        .devices()
        .get("kitchen")
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&device.credential, store::DeviceCredential::Certificate { fingerprint_sha256, .. } if *fingerprint_sha256 == info.fingerprint_sha256),
        "{device:?}"
    );

    // Spent.
    let (status, body) = json_of(
        web.http
            .post(web.url("/api/v1/enroll"))
            .json(&json!({"code": code, "csr_pem": csr_pem}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = json_of(
        web.http
            .post(web.url("/api/v1/enroll"))
            .json(&json!({"code": "AAAA-BBBB-CCCC", "csr_pem": csr_pem}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
