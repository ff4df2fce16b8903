//! User web apps under `/apps/NAME/`: behind the login, no way out of the app's folder; and
//! the embedded dashboard and SDK.

use reqwest::{Method, StatusCode};

use super::Web;

#[tokio::test]
async fn apps_are_served_behind_login_and_cannot_be_escaped() {
    let web = Web::start().await;
    let app = web.dir.path().join("apps/hello");
    std::fs::create_dir_all(app.join("js")).unwrap();
    std::fs::write(app.join("index.html"), "<h1>hello</h1>").unwrap();
    std::fs::write(app.join("js/main.js"), "export const x = 1;").unwrap();
    std::fs::write(web.dir.path().join("apps/secret.txt"), "nope").unwrap();

    // Not logged in: a script gets 401, a browser is sent to the login page.
    assert_eq!(
        web.http
            .get(web.url("/apps/hello/"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let response = web
        .http
        .get(web.url("/apps/hello/js/main.js"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()["location"],
        "/login?next=/apps/hello/js/main.js"
    );

    let response = web
        .req(Method::GET, "/apps/hello/", &web.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(response.text().await.unwrap(), "<h1>hello</h1>");
    let response = web
        .req(Method::GET, "/apps/hello/js/main.js", &web.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    let response = web
        .req(Method::GET, "/apps/hello", &web.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);

    for path in [
        "/apps/hello/..%2Fsecret.txt",
        "/apps/hello/..%2F..%2Fdevicecloud.db",
        "/apps/hello/%2E%2E/secret.txt",
        "/apps/..%2Fapps/secret.txt",
        "/apps/hello/js%5C..%5C..%5Csecret.txt",
        "/apps/nope/",
    ] {
        let response = web.req(Method::GET, path, &web.admin).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        // (A client may normalise `%2E%2E` itself; then it asks for another app, which redirects.)
        assert!(
            [
                StatusCode::NOT_FOUND,
                StatusCode::BAD_REQUEST,
                StatusCode::PERMANENT_REDIRECT
            ]
            .contains(&status),
            "{path}: {status} {body}"
        );
        assert!(
            !body.contains("nope") || path == "/apps/nope/",
            "{path} leaked: {body}"
        );
    }
}

#[tokio::test]
async fn the_dashboard_and_sdk_are_embedded_without_secrets() {
    let web = Web::start().await;
    let response = web.http.get(web.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("content-security-policy"));
    let html = response.text().await.unwrap();
    assert!(
        html.contains("<html") && !html.contains(&web.admin) && !html.contains("csrf"),
        "{html}"
    );
    assert_eq!(
        web.http
            .get(web.url("/login"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let sdk = web
        .http
        .get(web.url("/sdk/devicecloud.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(sdk.status(), StatusCode::OK);
    assert!(
        sdk.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    assert_eq!(
        web.http
            .get(web.url("/assets/../Cargo.toml"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        web.http
            .get(web.url("/nothing-here"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}
