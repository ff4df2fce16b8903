//! `/mqtt`: MQTT over secure WebSocket on the web port, with a bearer token, under the ACL.

use codec::{QoS, ReasonCode};
use serde_json::json;
use store::Role;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};

use super::{Answer, Web, fake_device, tls_stream};
use crate::harness::WAIT;

async fn mqtt_over_wss(
    web: &Web,
    token: &str,
    client_id: &str,
) -> (client::Client, client::Events) {
    let mut request = "wss://localhost/mqtt".into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers.insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let (ws, response) = tokio_tungstenite::client_async(request, tls_stream(web).await)
        .await
        .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt");
    let stream = broker::ws::WsStream::new(ws);
    let options = client::ClientOptions::new("mqtt://unused:1", client_id);
    tokio::time::timeout(WAIT, client::connect_stream(stream, &options))
        .await
        .expect("CONNACK in time")
        .expect("connected")
}

#[tokio::test]
async fn a_viewer_reads_but_cannot_command_and_an_operator_can() {
    let web = Web::start().await;
    let _device = fake_device(&web, "lamp", Answer::Confirm).await;
    let viewer = web.token("viewer", Role::Viewer).await;
    let (client, mut events) = mqtt_over_wss(&web, &viewer, "dash-viewer").await;
    assert_eq!(
        client
            .subscribe("devices/#", QoS::AtLeastOnce)
            .await
            .unwrap(),
        ReasonCode::GrantedQoS1
    );
    // Retained presence arrives.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("retained status")
            .unwrap()
        {
            client::Event::Publish(p) if &*p.topic == "devices/lamp/status" => {
                assert_eq!(&p.payload[..], b"online");
                break;
            }
            client::Event::Publish(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let refused = client
        .publish(
            "devices/lamp/set/led",
            json!({"value": true}).to_string(),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(client::ClientError::Rejected {
                code: ReasonCode::NotAuthorized,
                ..
            })
        ),
        "a viewer's command must be refused: {refused:?}"
    );
    assert!(
        client
            .subscribe("$SYS/#", QoS::AtMostOnce)
            .await
            .unwrap()
            .is_error()
    );

    let operator = web.token("operator", Role::Operator).await;
    let (op, _op_events) = mqtt_over_wss(&web, &operator, "dash-operator").await;
    op.publish(
        "devices/lamp/set/led",
        json!({"value": true, "id": "from-ws"}).to_string(),
        QoS::AtLeastOnce,
        false,
    )
    .await
    .expect("an operator may command");
    // The fake device applied it: the viewer sees the state it reports.
    loop {
        match tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the state report")
            .unwrap()
        {
            client::Event::Publish(p) if &*p.topic == "devices/lamp/state/led" => {
                let state: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                assert_eq!(
                    (state["value"].clone(), state["cmd"].clone()),
                    (json!(true), json!("from-ws"))
                );
                break;
            }
            client::Event::Publish(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn mqtt_over_websocket_needs_credentials_and_the_subprotocol() {
    let web = Web::start().await;
    let mut request = "wss://localhost/mqtt".into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let err = tokio_tungstenite::client_async(request, tls_stream(&web).await)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let mut request = "wss://localhost/mqtt".into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", web.admin)).unwrap(),
    );
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
    let err = tokio_tungstenite::client_async(request, tls_stream(&web).await)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test]
async fn the_dashboard_session_cookie_authorises_mqtt_over_websocket() {
    let web = Web::start().await;
    crate::harness::add_user(
        &web.server,
        "dana",
        Role::Operator,
        "a long enough password",
    )
    .await;
    let (cookie, _csrf) = web.login("dana", "a long enough password").await;
    let mut request = "wss://localhost/mqtt".into_client_request().unwrap();
    request
        .headers_mut()
        .insert("cookie", HeaderValue::from_str(&cookie).unwrap());
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let (ws, _) = tokio_tungstenite::client_async(request, tls_stream(&web).await)
        .await
        .unwrap();
    let options = client::ClientOptions::new("mqtt://unused:1", "dash-dana");
    let (client, _events) = tokio::time::timeout(
        WAIT,
        client::connect_stream(broker::ws::WsStream::new(ws), &options),
    )
    .await
    .expect("CONNACK in time")
    .expect("connected");
    // An operator may command but not read the broker's internals.
    client
        .publish(
            "devices/x/set/led",
            "{\"value\":true}",
            QoS::AtLeastOnce,
            false,
        )
        .await
        .expect("operator publish");
    assert!(
        client
            .subscribe("#", QoS::AtMostOnce)
            .await
            .unwrap()
            .is_error()
    );
}
