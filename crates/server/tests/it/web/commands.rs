//! Commands: confirmed by the device (200), not confirmed (504), offline (409), refused (422),
//! invalid (400), sent without waiting (202 + poll); and with the real agent.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use store::Role;

use super::{Answer, Web, fake_device, json_of};
use crate::harness;

async fn put(web: &Web, token: &str, path: &str, value: Value) -> (StatusCode, Value) {
    json_of(
        web.req(Method::PUT, path, token)
            .json(&value)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_confirmed_command_answers_200_with_the_reported_value() {
    let web = Web::start().await;
    let operator = web.token("op", Role::Operator).await;
    let _device = fake_device(&web, "lamp", Answer::Confirm).await;
    let (status, body) = put(
        &web,
        &operator,
        "/api/v1/devices/lamp/properties/led",
        json!(true),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (
            body["status"].clone(),
            body["value"].clone(),
            body["device"].clone()
        ),
        (json!("confirmed"), json!(true), json!("lamp"))
    );
    let id = body["command_id"].as_str().unwrap().to_string();
    let (status, detail) = web.get("/api/v1/devices/lamp", &operator).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["reported"]["led"]["value"], json!(true), "{detail}");
    assert_eq!(detail["desired"]["led"]["command_id"], json!(id));
    assert_eq!(detail["desired"]["led"]["status"], json!("confirmed"));
    // The store has the outcome too (recorded right after the answer, off the command path).
    let ok = harness::eventually(harness::WAIT, async || {
        let record = web.server.ctx.store.commands().get(&id).await.unwrap();
        record.is_some_and(|r| r.status == store::CommandStatus::Confirmed)
    })
    .await;
    assert!(ok, "the store never recorded the outcome");
    let (_, command) = web.get(&format!("/api/v1/commands/{id}"), &operator).await;
    assert_eq!(
        (
            command["device"].clone(),
            command["name"].clone(),
            command["actor"].clone()
        ),
        (json!("lamp"), json!("led"), json!("token:op"))
    );
    assert_eq!(
        web.get("/api/v1/commands/nope", &operator).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn without_wait_the_answer_is_202_and_the_command_can_be_polled() {
    let web = Web::start().await;
    let _device = fake_device(&web, "lamp", Answer::Confirm).await;
    let (status, body) = put(
        &web,
        &web.admin,
        "/api/v1/devices/lamp/properties/led?wait=false",
        json!(false),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "pending");
    let id = body["command_id"].as_str().unwrap().to_string();
    let ok = harness::eventually(harness::WAIT, async || {
        web.get(&format!("/api/v1/commands/{id}"), &web.admin)
            .await
            .1["status"]
            == "confirmed"
    })
    .await;
    assert!(ok, "the command never became confirmed");
    let (status, body) = put(
        &web,
        &web.admin,
        "/api/v1/devices/lamp/properties/led?wait=maybe",
        json!(false),
    )
    .await;
    assert_eq!(
        (status, body["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("wait")),
        "{body}"
    );
}

#[tokio::test]
async fn a_silent_device_gets_504_and_the_command_times_out() {
    let web = Web::start().await;
    web.server
        .ctx
        .twin
        .set_command_timeout(Duration::from_millis(300));
    let _device = fake_device(&web, "mute", Answer::Silent).await;
    let started = std::time::Instant::now();
    let (status, body) = put(
        &web,
        &web.admin,
        "/api/v1/devices/mute/properties/led",
        json!(true),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("did not confirm 'led'") && message.contains("mute"),
        "{message}"
    );
    let id = web.get("/api/v1/devices/mute", &web.admin).await.1["desired"]["led"]["command_id"]
        .as_str()
        .unwrap()
        .to_string();
    let ok = harness::eventually(harness::WAIT, async || {
        web.get(&format!("/api/v1/commands/{id}"), &web.admin)
            .await
            .1["status"]
            == "timeout"
    })
    .await;
    assert!(ok);
    assert_eq!(web.server.ctx.twin.pending_commands(), 0);
}

#[tokio::test]
async fn a_refused_command_is_422_with_the_device_error() {
    let web = Web::start().await;
    let _device = fake_device(&web, "grumpy", Answer::Refuse).await;
    let (status, body) = put(
        &web,
        &web.admin,
        "/api/v1/devices/grumpy/properties/led",
        json!(true),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("the LED is broken"),
        "{body}"
    );
}

#[tokio::test]
async fn invalid_and_offline_commands_are_refused_without_publishing() {
    let web = Web::start().await;
    let _device = fake_device(&web, "lamp", Answer::Confirm).await;
    let (status, body) = put(
        &web,
        &web.admin,
        "/api/v1/devices/lamp/properties/fan",
        json!(true),
    )
    .await;
    assert_eq!(
        (status, body["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("value")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("no output 'fan'"),
        "{body}"
    );
    let (status, body) = put(
        &web,
        &web.admin,
        "/api/v1/devices/lamp/properties/led",
        json!("on"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("expected a bool"),
        "{body}"
    );
    let (status, body) = json_of(
        web.req(
            Method::PUT,
            "/api/v1/devices/lamp/properties/led",
            &web.admin,
        )
        .header("content-type", "application/json")
        .body("tru")
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("value")),
        "{body}"
    );

    // Registered but never connected: 409, and nothing is sent.
    harness::add_token_device(&web.server, "sleepy").await;
    let mut sets = web
        .server
        .ctx
        .broker
        .local_client("test")
        .subscribe("devices/sleepy/set/#");
    let (status, body) = put(
        &web,
        &web.admin,
        "/api/v1/devices/sleepy/properties/led",
        json!(true),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("offline"),
        "{body}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), sets.recv())
            .await
            .is_err(),
        "a command was published"
    );
    let (status, _) = put(
        &web,
        &web.admin,
        "/api/v1/devices/ghost/properties/led",
        json!(true),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A device that went offline: 409 with its last-seen time.
    let client = web.server.ctx.broker.local_client("device:lamp");
    client.publish(super::retained("devices/lamp/status", "offline".into()));
    web.wait_online("lamp", false).await;
    let (status, body) = put(
        &web,
        &web.admin,
        "/api/v1/devices/lamp/properties/led",
        json!(true),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("last seen"),
        "{body}"
    );
}

/// The real agent with the simulated GPIO backend, over mqtts with a token.
pub async fn start_agent(web: &Web, id: &str) -> agent::agent::AgentHandle {
    let token = harness::add_token_device(&web.server, id).await;
    let bundle = proto::bundle::Bundle {
        device_id: id.to_string(),
        broker_urls: vec![format!(
            "mqtts://localhost:{}",
            web.server.mqtts_addr().unwrap().port()
        )],
        api_url: Some(web.base.clone()),
        ca_pem: web.server.ctx.ca.cert_pem().to_string(),
        credentials: proto::bundle::Credentials::Token { token },
    };
    let config = agent::demo::demo_config(web.dir.path().join(format!("agent-{id}")));
    let gpio = agent::agent::gpio_for(&config);
    agent::agent::Agent::start(config, bundle, gpio, std::future::pending())
        .await
        .expect("the agent starts")
}

#[tokio::test]
async fn the_real_agent_confirms_the_led() {
    let web = Web::start().await;
    let agent = start_agent(&web, "demo").await;
    web.wait_online("demo", true).await;
    let ok = harness::eventually(harness::WAIT, async || {
        web.get("/api/v1/devices/demo", &web.admin).await.1["capabilities"]["outputs"][0]["name"]
            == "led"
    })
    .await;
    assert!(ok, "no meta from the agent");
    for value in [true, false, true] {
        let (status, body) = put(
            &web,
            &web.admin,
            "/api/v1/devices/demo/properties/led",
            json!(value),
        )
        .await;
        assert_eq!(
            (status, body["value"].clone()),
            (StatusCode::OK, json!(value)),
            "{body}"
        );
    }
    let sim = agent.sim().expect("simulated GPIO");
    assert_eq!(sim.level("led"), Some(true), "the simulated line is high");
    agent.shutdown().await;
    web.wait_online("demo", false).await;
}
