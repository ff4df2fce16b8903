//! Authentication and authorisation: 401/403/400/429, sessions with cookies and CSRF.

use reqwest::{Method, StatusCode};
use serde_json::json;
use store::Role;

use super::{Web, json_of};
use crate::harness;

#[tokio::test]
async fn missing_or_bad_credentials_get_401() {
    let web = Web::start().await;
    let (status, body) = json_of(
        web.http
            .get(web.url("/api/v1/devices"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    let (status, _) = web
        .get("/api/v1/devices", "dct_00000000000000000000000000000000")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = json_of(
        web.http
            .get(web.url("/api/v1/devices"))
            .header("authorization", "Basic eDp5")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = json_of(
        web.http
            .get(web.url("/api/v1/me"))
            .header("cookie", "dc_session=forged")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Every protected endpoint answers 401 the same way.
    for (method, path) in [
        (Method::GET, "/api/v1/devices/x"),
        (Method::PUT, "/api/v1/devices/x/properties/led"),
        (Method::GET, "/api/v1/commands/x"),
        (Method::GET, "/api/v1/devices/x/telemetry/t"),
        (Method::GET, "/api/v1/tokens"),
        (Method::GET, "/api/v1/users"),
        (Method::GET, "/api/v1/live"),
        (Method::GET, "/api/v1/events"),
        (Method::GET, "/metrics"),
        (Method::GET, "/mqtt"),
    ] {
        let status = web
            .http
            .request(method.clone(), web.url(path))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    // Revoking a token ends its access at once.
    let token = web.token("short-lived", Role::Viewer).await;
    assert_eq!(web.get("/api/v1/devices", &token).await.0, StatusCode::OK);
    let status = web
        .req(Method::DELETE, "/api/v1/tokens/short-lived", &web.admin)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        web.get("/api/v1/devices", &token).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn roles_are_enforced_with_403() {
    let web = Web::start().await;
    let viewer = web.token("viewer", Role::Viewer).await;
    let operator = web.token("operator", Role::Operator).await;
    let (status, body) = json_of(
        web.req(Method::PUT, "/api/v1/devices/x/properties/led", &viewer)
            .json(&json!(true))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("operator"),
        "{body}"
    );
    for path in ["/api/v1/tokens", "/api/v1/users", "/metrics"] {
        assert_eq!(
            web.get(path, &operator).await.0,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    let status = web
        .req(Method::POST, "/api/v1/devices", &operator)
        .json(&json!({"id": "x"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The viewer may read.
    let (status, body) = web.get("/api/v1/devices", &viewer).await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));
    let (_, me) = web.get("/api/v1/me", &viewer).await;
    assert_eq!(me["role"], "viewer");
}

#[tokio::test]
async fn bad_json_names_the_field() {
    let web = Web::start().await;
    let (status, body) = json_of(
        web.req(Method::POST, "/api/v1/tokens", &web.admin)
            .json(&json!({"name": "ci", "role": "king"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "role", "{body}");
    let (status, body) = json_of(
        web.http
            .post(web.url("/api/v1/login"))
            .json(&json!({"username": "admin"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "password", "{body}");
    let (status, body) = json_of(
        web.req(Method::POST, "/api/v1/users", &web.admin)
            .header("content-type", "application/json")
            .body("{\"name\": 5}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "name", "{body}");
    let (status, body) = json_of(
        web.req(Method::POST, "/api/v1/devices", &web.admin)
            .json(&json!({"id": "Bad Id!"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("id")),
        "{body}"
    );
    let (status, body) = json_of(
        web.req(Method::POST, "/api/v1/users", &web.admin)
            .json(&json!({"name": "bob", "password": "short"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("password")),
        "{body}"
    );
}

#[tokio::test]
async fn sessions_use_secure_cookies_and_csrf() {
    let web = Web::start().await;
    harness::add_user(&web.server, "alice", Role::Admin, "correct horse battery").await;
    let response = web
        .http
        .post(web.url("/api/v1/login"))
        .json(&json!({"username": "alice", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    for attribute in [
        "dc_session=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(
            set_cookie.contains(attribute),
            "{set_cookie} lacks {attribute}"
        );
    }
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        (body["user"].clone(), body["role"].clone()),
        (json!("alice"), json!("admin"))
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let csrf = body["csrf_token"].as_str().unwrap().to_string();
    // The session id is stored hashed, never as is.
    assert!(!set_cookie.is_empty() && !csrf.is_empty());

    let me = web
        .http
        .get(web.url("/api/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let (status, me) = json_of(me).await;
    assert_eq!(
        (status, me["user"].clone(), me["csrf_token"].clone()),
        (StatusCode::OK, json!("alice"), json!(csrf))
    );

    // A mutating request with the cookie but without the CSRF header is refused...
    let create = || {
        web.http
            .post(web.url("/api/v1/tokens"))
            .header("cookie", &cookie)
            .json(&json!({"name": "t1"}))
    };
    let (status, body) = json_of(create().send().await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().unwrap().contains("CSRF"), "{body}");
    let status = create()
        .header("x-csrf-token", "wrong")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN);
    // ...and accepted with it.
    let (status, body) =
        json_of(create().header("x-csrf-token", &csrf).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body["token"].as_str().unwrap().starts_with("dct_"));

    // Logout ends the session.
    let status = web
        .http
        .post(web.url("/api/v1/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let status = web
        .http
        .get(web.url("/api/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_address() {
    let web = Web::start().await;
    harness::add_user(&web.server, "bob", Role::Viewer, "the right password").await;
    let attempt = |password: &'static str| {
        web.http
            .post(web.url("/api/v1/login"))
            .json(&json!({"username": "bob", "password": password}))
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(attempt("wrong").await.unwrap().status());
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // While banned, even the right password is refused, with a Retry-After.
    let response = attempt("the right password").await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    // Unknown users are refused like wrong passwords.
    let status = web
        .http
        .post(web.url("/api/v1/login"))
        .json(&json!({"username": "nobody", "password": "x"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn admin_manages_users_tokens_and_devices() {
    let web = Web::start().await;
    let (status, body) = json_of(
        web.req(Method::POST, "/api/v1/users", &web.admin)
            .json(
                &json!({"name": "carol", "password": "a long enough password", "role": "operator"}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, users) = web.get("/api/v1/users", &web.admin).await;
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "carol" && u["role"] == "operator"),
        "{users}"
    );
    let (cookie, _) = web.login("carol", "a long enough password").await;
    assert!(cookie.starts_with("dc_session="));
    let status = web
        .req(Method::POST, "/api/v1/users", &web.admin)
        .json(&json!({"name": "carol", "password": "a long enough password"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        web.req(Method::DELETE, "/api/v1/users/carol", &web.admin)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    // Her session ended with her.
    let status = web
        .http
        .get(web.url("/api/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        web.req(Method::DELETE, "/api/v1/users/carol", &web.admin)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    let (_, tokens) = web.get("/api/v1/tokens", &web.admin).await;
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "root"),
        "{tokens}"
    );
    assert!(
        tokens.to_string().find("dct_").is_none(),
        "secrets are never listed"
    );
    assert_eq!(
        web.req(Method::DELETE, "/api/v1/tokens/nope", &web.admin)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    // Devices with a token credential come with their bundle.
    let (status, body) = json_of(
        web.req(Method::POST, "/api/v1/devices", &web.admin)
            .json(&json!({"id": "pump", "credential": "token"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let bundle =
        proto::bundle::Bundle::parse(body["bundle"].as_str().unwrap(), "response").unwrap();
    assert_eq!(bundle.device_id, "pump");
    assert!(matches!(
        bundle.credentials,
        proto::bundle::Credentials::Token { .. }
    ));
    let (status, body) = json_of(
        web.req(Method::POST, "/api/v1/devices", &web.admin)
            .json(&json!({"id": "fan", "credential": "certificate"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let bundle =
        proto::bundle::Bundle::parse(body["bundle"].as_str().unwrap(), "response").unwrap();
    assert!(matches!(
        bundle.credentials,
        proto::bundle::Credentials::Certificate { .. }
    ));
    let status = web
        .req(Method::POST, "/api/v1/devices", &web.admin)
        .json(&json!({"id": "fan"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, devices) = web.get("/api/v1/devices", &web.admin).await;
    let ids: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fan", "pump"]);
    assert_eq!(
        web.req(Method::DELETE, "/api/v1/devices/fan", &web.admin)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        web.get("/api/v1/devices/fan", &web.admin).await.0,
        StatusCode::NOT_FOUND
    );
    // Every change is in the audit log.
    let audit = web.server.ctx.store.audit().list(100).await.unwrap();
    for action in ["user.add", "user.remove", "device.add", "device.remove"] {
        assert!(
            audit
                .iter()
                .any(|e| e.action == action && e.actor == "token:root"),
            "no {action} in {audit:?}"
        );
    }
}

#[tokio::test]
async fn health_and_metrics() {
    let web = Web::start().await;
    let (status, body) = json_of(web.http.get(web.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("ok"))
    );
    let response = web
        .req(Method::GET, "/metrics", &web.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for metric in [
        "devicecloud_mqtt_clients_connected ",
        "devicecloud_http_requests_total ",
        "devicecloud_devices_online ",
    ] {
        assert!(text.contains(metric), "{metric} missing from:\n{text}");
    }
    let requests: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("devicecloud_http_requests_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(requests >= 2, "{requests}");
}
