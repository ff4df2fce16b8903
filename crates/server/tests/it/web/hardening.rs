//! Issue 8 on the web tier: the client-id rule and revocation on `/mqtt`, the bound on password
//! checks, per-account backoff, the WebSocket Origin check, HSTS, the apps' CSP, the post-login
//! redirect, and the HTTP connection limit and header timeout.

use std::time::{Duration, Instant};

use codec::QoS;
use reqwest::{Method, StatusCode};
use serde_json::json;
use store::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};

use super::{Answer, Web, fake_device, tls_stream};
use crate::harness::{self, WAIT};

const PASSWORD: &str = "a long enough password";

/// What authenticates a `/mqtt` request.
enum Via<'a> {
    Bearer(&'a str),
    Cookie(&'a str),
}

/// Opens `/mqtt` with `via` (and an `Origin` header, if given); `Err` carries the HTTP refusal.
async fn open_mqtt_ws(
    web: &Web,
    via: &Via<'_>,
    origin: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    String,
> {
    let mut request = "wss://localhost/mqtt".into_client_request().unwrap();
    let headers = request.headers_mut();
    match via {
        Via::Bearer(token) => headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        ),
        Via::Cookie(cookie) => headers.insert("cookie", HeaderValue::from_str(cookie).unwrap()),
    };
    headers.insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    if let Some(origin) = origin {
        headers.insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    tokio_tungstenite::client_async(request, tls_stream(web).await)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

async fn mqtt_client(
    web: &Web,
    via: &Via<'_>,
    client_id: &str,
) -> Result<(client::Client, client::Events), client::ClientError> {
    let ws = open_mqtt_ws(web, via, None).await.expect("upgrade");
    let options = client::ClientOptions::new("mqtt://unused:1", client_id);
    tokio::time::timeout(
        WAIT,
        client::connect_stream(broker::ws::WsStream::new(ws), &options),
    )
    .await
    .expect("CONNACK in time")
}

/// Waits for the connection to be closed by the server; panics if it is not within [`WAIT`].
async fn closed_by_server(events: &mut client::Events, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("{what}: the /mqtt connection is still open after {WAIT:?}"),
            Ok(None | Some(client::Event::Disconnected(_))) => return,
            Ok(Some(client::Event::Publish(_))) => {}
        }
    }
}

/// Proves the connection is still open: a subscription round trip succeeds.
async fn still_open(client: &client::Client, what: &str) {
    let result = tokio::time::timeout(WAIT, client.subscribe("devices/+/status", QoS::AtMostOnce))
        .await
        .expect("SUBACK in time");
    assert!(result.is_ok(), "{what}: {result:?}");
}

#[tokio::test]
async fn a_viewers_mqtt_connect_with_a_devices_client_id_is_refused_and_the_device_stays() {
    // Needs the broker core to call `Authenticator::authorize_client_id` for pre-authenticated
    // (`/mqtt`) CONNECTs ("core" helper's branch).
    let web = Web::start().await;
    let device = fake_device(&web, "demo", Answer::Confirm).await;
    let viewer = web.token("viewer", Role::Viewer).await;
    let refused = mqtt_client(&web, &Via::Bearer(&viewer), "demo")
        .await
        .map(|_| ());
    assert!(
        matches!(
            refused,
            Err(client::ClientError::Refused {
                code: codec::ReasonCode::ClientIdentifierNotValid,
                ..
            })
        ),
        "a viewer must not take over the device's session: {refused:?}"
    );
    web.wait_online("demo", true).await;
    drop(device);
}

#[tokio::test]
async fn logout_closes_exactly_the_mqtt_connections_of_that_session() {
    let web = Web::start().await;
    harness::add_user(&web.server, "dana", Role::Operator, PASSWORD).await;
    let (first, csrf) = web.login("dana", PASSWORD).await;
    let (second, _) = web.login("dana", PASSWORD).await;
    let (_a, mut a_events) = mqtt_client(&web, &Via::Cookie(&first), "dana-a")
        .await
        .unwrap();
    let (b, _b_events) = mqtt_client(&web, &Via::Cookie(&second), "dana-b")
        .await
        .unwrap();
    let response = web
        .http
        .post(web.url("/api/v1/logout"))
        .header("cookie", &first)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    closed_by_server(&mut a_events, "logout").await;
    still_open(&b, "the other session's connection").await;
}

#[tokio::test]
async fn a_session_ended_by_another_process_closes_its_mqtt_connection() {
    // The CLI path: the change is written to the database directly; the revocation watcher
    // notices the change counter and re-checks.
    let web = Web::start().await;
    harness::add_user(&web.server, "erin", Role::Viewer, PASSWORD).await;
    let (cookie, _) = web.login("erin", PASSWORD).await;
    let (_c, mut events) = mqtt_client(&web, &Via::Cookie(&cookie), "erin-1")
        .await
        .unwrap();
    let id = cookie.split_once('=').unwrap().1;
    web.server
        .ctx
        .store
        .sessions()
        .delete(&store::secret::hash_token(id))
        .await
        .unwrap();
    closed_by_server(&mut events, "session deleted in the store").await;
}

#[tokio::test]
async fn an_expired_session_closes_its_mqtt_connection() {
    let web = Web::start().await;
    harness::add_user(&web.server, "fay", Role::Viewer, PASSWORD).await;
    let (cookie, _) = web.login("fay", PASSWORD).await;
    let (_c, mut events) = mqtt_client(&web, &Via::Cookie(&cookie), "fay-1")
        .await
        .unwrap();
    let id = cookie.split_once('=').unwrap().1;
    // Expiry is not a registry change: the watcher's periodic full re-check finds it.
    web.server
        .ctx
        .store
        .sessions()
        .extend(&store::secret::hash_token(id), store::now_ms() - 1)
        .await
        .unwrap();
    closed_by_server(&mut events, "session expired").await;
}

#[tokio::test]
async fn a_role_change_or_removal_from_the_cli_closes_session_connections() {
    let web = Web::start().await;
    harness::add_user(&web.server, "gil", Role::Operator, PASSWORD).await;
    harness::add_user(&web.server, "hal", Role::Operator, PASSWORD).await;
    let (gil, _) = web.login("gil", PASSWORD).await;
    let (hal, _) = web.login("hal", PASSWORD).await;
    let (_g, mut g_events) = mqtt_client(&web, &Via::Cookie(&gil), "gil-1")
        .await
        .unwrap();
    let (_h, mut h_events) = mqtt_client(&web, &Via::Cookie(&hal), "hal-1")
        .await
        .unwrap();
    let users = web.server.ctx.store.users();
    users.set_role("gil", Role::Viewer).await.unwrap();
    closed_by_server(&mut g_events, "role changed").await;
    users.remove("hal").await.unwrap();
    closed_by_server(&mut h_events, "user removed").await;
}

#[tokio::test]
async fn removing_a_user_through_the_api_closes_their_session_connections() {
    let web = Web::start().await;
    harness::add_user(&web.server, "ivy", Role::Viewer, PASSWORD).await;
    let (cookie, _) = web.login("ivy", PASSWORD).await;
    let (_c, mut events) = mqtt_client(&web, &Via::Cookie(&cookie), "ivy-1")
        .await
        .unwrap();
    let response = web
        .req(Method::DELETE, "/api/v1/users/ivy", &web.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    closed_by_server(&mut events, "user removed through the API").await;
}

#[tokio::test]
async fn a_token_revoked_in_the_store_closes_its_mqtt_connection() {
    let web = Web::start().await;
    let token = web.token("script", Role::Operator).await;
    let (_c, mut events) = mqtt_client(&web, &Via::Bearer(&token), "script-1")
        .await
        .unwrap();
    web.server
        .ctx
        .store
        .tokens()
        .revoke("script")
        .await
        .unwrap();
    closed_by_server(&mut events, "token revoked in the store").await;
}

#[tokio::test]
async fn a_password_change_from_the_cli_closes_mqtt_and_session_connections() {
    let web = Web::start().await;
    harness::add_user(&web.server, "jo", Role::Operator, PASSWORD).await;
    let (cookie, _) = web.login("jo", PASSWORD).await;
    let (_ws, mut ws_events) = mqtt_client(&web, &Via::Cookie(&cookie), "jo-ws")
        .await
        .unwrap();
    let mut options = client::ClientOptions::new(
        format!("mqtt://{}", web.server.mqtt_addr().unwrap()),
        "jo-tcp",
    );
    options.username = Some("jo".into());
    options.password = Some(PASSWORD.into());
    let (_tcp, mut tcp_events) = client::connect(&options).await.unwrap();
    let hash = store::secret::hash_password("another long password").unwrap();
    web.server
        .ctx
        .store
        .users()
        .set_password("jo", &hash)
        .await
        .unwrap();
    closed_by_server(&mut ws_events, "password changed (session)").await;
    closed_by_server(&mut tcp_events, "password changed (MQTT login)").await;
}

#[tokio::test]
async fn websocket_upgrades_from_another_sites_page_get_403() {
    let web = Web::start().await;
    let via = Via::Bearer(&web.admin);
    let err = open_mqtt_ws(&web, &via, Some("https://evil.example"))
        .await
        .unwrap_err();
    assert!(err.contains("403"), "{err}");
    let err = open_mqtt_ws(&web, &via, Some("null")).await.unwrap_err();
    assert!(err.contains("403"), "{err}");
    // tokio-tungstenite sends `Host: localhost` for wss://localhost/mqtt.
    open_mqtt_ws(&web, &via, Some("https://localhost"))
        .await
        .expect("same origin");
    open_mqtt_ws(&web, &via, None)
        .await
        .expect("no Origin: not a browser page");

    for (origin, expected) in [
        ("https://evil.example", StatusCode::FORBIDDEN),
        (web.base.as_str(), StatusCode::SWITCHING_PROTOCOLS),
    ] {
        let response = web
            .http
            .get(web.url("/api/v1/live"))
            .bearer_auth(&web.admin)
            .header("origin", origin)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .version(reqwest::Version::HTTP_11)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "live with Origin {origin}");
    }
    let (_, metrics) = web.get("/metrics", &web.admin).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("devicecloud_websocket_origin_refused_total 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn https_answers_carry_hsts_and_apps_carry_a_csp() {
    let web = Web::start().await;
    let response = web.http.get(web.url("/healthz")).send().await.unwrap();
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let app = web.dir.path().join("apps/hello");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("index.html"), "<p>hi</p>").unwrap();
    let response = web
        .req(Method::GET, "/apps/hello/", &web.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "frame-src 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing in {csp}");
    }
}

#[test]
fn the_post_login_redirect_accepts_only_same_origin_paths() {
    // The check runs in the browser (assets/js/next.js); run the same module under node.
    let module = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/js/next.js");
    let script = format!(
        "import {{ sameOriginPath }} from {:?};\n\
         const cases = JSON.parse(process.argv[1]);\n\
         console.log(JSON.stringify(cases.map((c) => sameOriginPath(c, 'https://iot.example:8443'))));",
        format!("file://{}", module.display())
    );
    let cases = [
        ("/apps/x/", Some("/apps/x/")),
        ("/apps/x/?a=1#top", Some("/apps/x/?a=1#top")),
        ("/\\evil.example", None),
        ("//evil.example", None),
        ("https://evil.example/", None),
        ("/%5cevil.example", None),
        ("/%2F/evil.example", None),
        ("/\t/evil.example", None),
        ("/login", None),
        ("javascript:alert(1)", None),
    ];
    let input: Vec<&str> = cases.iter().map(|(c, _)| *c).collect();
    let output = std::process::Command::new("node")
        .args(["--input-type=module", "-e", &script, "--"])
        .arg(serde_json::to_string(&input).unwrap())
        .output()
        .expect("node runs (apt install nodejs)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Vec<Option<String>> = serde_json::from_slice(&output.stdout).unwrap();
    for ((case, expected), got) in cases.iter().zip(got) {
        assert_eq!(got.as_deref(), *expected, "next={case:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_logins_run_at_most_the_bound_and_the_excess_gets_503() {
    const BOUND: usize = 2;
    let web = Web::start_with(|c| {
        c.auth.max_concurrent_password_checks = BOUND;
        c.auth.max_queued_password_checks = 4;
        // Otherwise the backoff refuses all but five before they cost anything (a botnet has
        // many addresses; this test has one).
        c.auth.web_failures_before_backoff = 1000;
    })
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (http, url) = (web.http.clone(), web.url("/api/v1/login"));
        tasks.spawn(async move {
            let started = Instant::now();
            let response = http
                .post(url)
                .json(&json!({"username": format!("nobody{i}"), "password": "wrong"}))
                .send()
                .await
                .unwrap();
            (
                response.status(),
                response.headers().contains_key("retry-after"),
                started.elapsed(),
            )
        });
    }
    let mut statuses = Vec::new();
    while let Some(done) = tasks.join_next().await {
        statuses.push(done.unwrap());
    }
    let busy: Vec<_> = statuses
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!busy.is_empty(), "some logins must get 503: {statuses:?}");
    assert!(busy.iter().all(|(_, retry_after, _)| *retry_after));
    let gate = web.server.ctx.registry.password_gate().counters();
    let max = gate.max_running.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..=BOUND).contains(&max), "max concurrent checks {max}");
    let (_, metrics) = web.get("/metrics", &web.admin).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains(&format!(
            "devicecloud_auth_busy_refused_total {}",
            gate.busy_refused.load(std::sync::atomic::Ordering::Relaxed)
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_mqtt_logins_run_at_most_the_bound_and_the_excess_gets_0x89() {
    const BOUND: usize = 2;
    let web = Web::start_with(|c| {
        c.auth.max_concurrent_password_checks = BOUND;
        c.auth.max_queued_password_checks = 4;
    })
    .await;
    harness::add_user(&web.server, "admin2", Role::Admin, PASSWORD).await;
    let addr = web.server.mqtt_addr().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        tasks.spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let user = if i % 2 == 0 {
                "admin2".to_owned()
            } else {
                format!("ghost{i}")
            };
            harness::mqtt_connect(
                &mut tcp,
                &harness::connect_v5("", Some(&user), Some(b"wrong")),
            )
            .await
            .unwrap()
        });
    }
    let mut codes = Vec::new();
    while let Some(code) = tasks.join_next().await {
        codes.push(code.unwrap());
    }
    assert!(
        codes.iter().all(|c| [0x86, 0x89, 0x8A].contains(c)),
        "{codes:?}"
    );
    assert!(
        codes.contains(&0x89),
        "some CONNECTs must get Server busy: {codes:?}"
    );
    let max = web
        .server
        .ctx
        .registry
        .password_gate()
        .counters()
        .max_running
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(max <= BOUND, "max concurrent checks {max}");
}

#[tokio::test]
async fn a_login_flood_against_one_account_bans_it_from_every_address_but_not_others() {
    let web = Web::start_with(|c| {
        c.auth.failures_before_backoff = 3;
    })
    .await;
    harness::add_user(&web.server, "kim", Role::Viewer, PASSWORD).await;
    harness::add_user(&web.server, "lee", Role::Viewer, PASSWORD).await;
    let mqtt = web.server.mqtt_addr().unwrap();
    let connect_from = async |source: &str, user: &str, password: &[u8]| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::new(source.parse().unwrap(), 0))
            .unwrap();
        let mut tcp = socket.connect(mqtt).await.unwrap();
        harness::mqtt_connect(
            &mut tcp,
            &harness::connect_v5("", Some(user), Some(password)),
        )
        .await
        .unwrap()
    };
    // Three addresses take one guess each at kim.
    for source in ["127.0.0.11", "127.0.0.12", "127.0.0.13"] {
        assert_eq!(connect_from(source, "kim", b"guess").await, 0x86);
    }
    // kim is now backing off from anywhere, even with the right password...
    assert_eq!(
        connect_from("127.0.0.14", "kim", PASSWORD.as_bytes()).await,
        0x8A
    );
    // ...while lee logs in from one of the guessing addresses.
    assert_eq!(
        connect_from("127.0.0.11", "lee", PASSWORD.as_bytes()).await,
        0
    );
    // And lee's success did not clear what 127.0.0.11 did to kim.
    assert!(
        web.server
            .ctx
            .registry
            .banned_for("127.0.0.15".parse().unwrap(), Some("kim"))
            .is_some()
    );
}

#[tokio::test]
async fn unknown_and_known_mqtt_user_names_cost_one_password_check_each() {
    let web = Web::start().await;
    harness::add_user(&web.server, "mo", Role::Viewer, PASSWORD).await;
    let addr = web.server.mqtt_addr().unwrap();
    let counters = web.server.ctx.registry.password_gate().counters();
    let checked = || counters.checked.load(std::sync::atomic::Ordering::Relaxed);
    for user in ["mo", "nobody-at-all"] {
        let before = checked();
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let code = harness::mqtt_connect(
            &mut tcp,
            &harness::connect_v5("", Some(user), Some(b"wrong")),
        )
        .await
        .unwrap();
        assert_eq!(code, 0x86, "{user}");
        assert_eq!(checked() - before, 1, "{user}: one argon2 check");
    }
}

#[tokio::test]
async fn the_web_port_holds_at_most_max_connections_and_drops_slow_headers() {
    let web = Web::start_with(|c| {
        c.web.max_connections = 2;
        c.web.header_read_timeout_secs = 1;
    })
    .await;
    let addr = web.server.https_addr().unwrap();
    let first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let second = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The third is accepted and closed at once: reading gives end of stream, not a TLS answer.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, third.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection over the limit must be closed");
    drop((first, second));
    // Slots free up again; a client that sends headers slowly is cut off.
    let ok = harness::eventually(WAIT, async || {
        web.http.get(web.url("/healthz")).send().await.is_ok()
    })
    .await;
    assert!(ok, "the web port serves again below the limit");
    let mut slow = tls_stream(&web).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, slow.read_to_end(&mut rest))
        .await
        .expect("the slow client is cut off");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (_, metrics) = web.get("/metrics", &web.admin).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("devicecloud_http_connections_refused_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_flooding_state_does_not_cost_another_its_command_confirmation() {
    let web = Web::start_with(|c| c.bus.per_device_queue = 64).await;
    let operator = web.token("op", Role::Operator).await;
    let _quiet = fake_device(&web, "quiet", Answer::Confirm).await;
    let token = harness::add_token_device(&web.server, "noisy").await;
    let mut options = client::ClientOptions::new(
        format!("mqtt://{}", web.server.mqtt_addr().unwrap()),
        "noisy",
    );
    options.username = Some("noisy".into());
    options.password = Some(token.into());
    let (noisy, _events) = client::connect(&options).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let state = json!({"value": sent, "ts": store::now_ms()}).to_string();
                if noisy
                    .publish("devices/noisy/state/counter", state, QoS::AtMostOnce, false)
                    .await
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            sent
        })
    };
    // Let the flood build up, proven by the bus dropping the flooder's excess.
    let flooding = harness::eventually(WAIT, async || {
        web.server
            .ctx
            .bus_counters
            .dropped_over_share
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    })
    .await;
    let started = Instant::now();
    let (status, body) = super::json_of(
        web.req(
            Method::PUT,
            "/api/v1/devices/quiet/properties/led",
            &operator,
        )
        .json(&json!(true))
        .send()
        .await
        .unwrap(),
    )
    .await;
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.await.unwrap();
    assert!(
        flooding,
        "the flood never exceeded the device's share ({sent} sent)"
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], json!("confirmed"), "{body}");
    assert!(
        took < Duration::from_secs(2),
        "confirmation took {took:?} during a flood of {sent}"
    );
}

#[tokio::test]
async fn state_names_beyond_the_limit_are_refused_and_counted() {
    let web = Web::start_with(|c| c.telemetry.max_state_names_per_device = 10).await;
    let device = web.server.ctx.broker.local_client("device:many");
    for i in 0..50 {
        device.publish(broker::Message::new(
            format!("devices/many/state/n{i}"),
            json!({"value": i, "ts": store::now_ms()}).to_string(),
        ));
    }
    let twin = web.server.ctx.twin.clone();
    let refused = harness::eventually(WAIT, async || {
        twin.counters()
            .state_names_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            == 40
    })
    .await;
    assert!(refused, "40 of 50 names must be refused");
    assert_eq!(twin.device("many").unwrap().reported.len(), 10);
    let (_, metrics) = web.get("/metrics", &web.admin).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("devicecloud_state_names_refused_total 40")
    );
}

#[tokio::test]
async fn readings_stamped_outside_the_sane_window_are_refused_and_counted() {
    let web = Web::start().await;
    let device = web.server.ctx.broker.local_client("device:clock");
    let now = store::now_ms();
    for (id, ts) in [
        (1, now),
        (2, 0),
        (3, now + 3 * 24 * 3600 * 1000),
        (4, now + 1000),
    ] {
        device.publish(broker::Message::new(
            "devices/clock/telemetry/temp",
            json!({"id": id, "ts": ts, "value": 20.0}).to_string(),
        ));
    }
    let ingest = web.server.ctx.ingest.clone();
    let refused = harness::eventually(WAIT, async || {
        ingest
            .counters()
            .timestamp_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            == 2
    })
    .await;
    assert!(refused, "1970 and three days ahead must be refused");
    let (_, metrics) = web.get("/metrics", &web.admin).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("devicecloud_telemetry_timestamp_refused_total 2")
    );
}

#[tokio::test]
async fn a_request_body_that_trickles_in_is_cut_off_after_the_body_timeout() {
    let web = Web::start_with(|c| c.web.body_read_timeout_secs = 1).await;
    let mut tls = tls_stream(&web).await;
    // Promises 64 bytes of body and sends 10.
    tls.write_all(
        b"POST /api/v1/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"usernam",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer))
        .await
        .expect("the server gives up on the body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 4"),
        "a client error, not a hang: {answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
