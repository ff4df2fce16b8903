//! The OpenAPI document is served and covers every route the router serves.

use axum::{body::Body, http::Request};
use reqwest::StatusCode;
use tower::ServiceExt;

use super::Web;

#[tokio::test]
async fn every_route_is_served_and_documented() {
    let web = Web::start().await;
    let (status, spec) = super::json_of(
        web.http
            .get(web.url("/api/v1/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(spec["openapi"], "3.1.0");
    let app = server::web::app(web.server.ctx.clone());
    for (method, path) in server::web::ROUTES {
        assert!(
            spec["paths"][*path][*method].is_object(),
            "{method} {path} is not documented"
        );
        let concrete = path
            .replace("{id}", "x")
            .replace("{name}", "x")
            .replace("{sensor}", "x")
            .replace("{path}", "x");
        let request = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(&concrete)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        // Unauthenticated: 401 (or a 4xx about the request), but never "no such route".
        let status = response.status();
        assert!(
            status != 404 && status != 405,
            "{method} {concrete} is not routed: {status}"
        );
    }
    // And nothing is documented that is not routed.
    let documented: usize = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(documented, server::web::ROUTES.len());
}
