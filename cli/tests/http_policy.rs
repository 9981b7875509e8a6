//! What every API request goes through besides auth: the origin rule (a
//! browser page elsewhere cannot drive the API, even with auth off), CORS
//! for listed origins, security headers, and the request deadline.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, unique_app};
use serde_json::{Value, json};

const DASHBOARD: &str = "https://dash.example";

async fn send(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    origin: Option<&str>,
) -> reqwest::Response {
    let mut req = h.http.request(method, format!("{}{path}", h.api));
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.json(&json!({})).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_another_origin_cannot_drive_the_api_and_a_listed_one_gets_cors() {
    let h = Harness::start_with(|c| c.allowed_origins = vec![DASHBOARD.into()]).await;
    let app = unique_app("origin");
    let spec = json!({"name": app, "processes": {"web": {"port": 8080}}});
    assert_eq!(h.post("/api/apps", spec).await.0, 201);

    // A form post from a page the user visits: refused, nothing queued,
    // though auth is off.
    let resp = send(
        &h,
        reqwest::Method::POST,
        &format!("/api/apps/{app}/deploy"),
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 403);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("evil.example"),
        "{body}"
    );
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM deployments WHERE app = $1")
        .bind(&app)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "a refused request queued a deployment");

    // The listed origin: a preflight, then the call, both with CORS.
    let resp = h
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/api/apps", h.api))
        .header("origin", DASHBOARD)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(resp.headers()["access-control-allow-origin"], DASHBOARD);
    assert!(
        resp.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    let resp = send(&h, reqwest::Method::GET, "/api/apps", Some(DASHBOARD)).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], DASHBOARD);
    assert_eq!(resp.headers()["vary"], "Origin");

    // The API's own origin is always allowed; the CLI sends no origin.
    let own = h.api.clone();
    let resp = send(&h, reqwest::Method::GET, "/api/apps", Some(&own)).await;
    assert_eq!(resp.status().as_u16(), 200);
    let resp = send(&h, reqwest::Method::GET, "/api/apps", None).await;
    assert_eq!(resp.status().as_u16(), 200);
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(resp.headers()[name], value, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_past_its_deadline_gets_a_json_503_and_the_api_goes_on() {
    let h = Harness::start_with(|c| c.request_timeout = Duration::from_secs(2)).await;
    // Hold the apps table so listing it cannot finish.
    let mut blocker = h.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE apps IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let started = Instant::now();
    let (code, body) = tokio::time::timeout(Duration::from_secs(15), h.get("/api/apps"))
        .await
        .expect("no answer within 15 s: the request has no deadline");
    let took = started.elapsed();
    assert_eq!(code, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("NORN_REQUEST_TIMEOUT"),
        "{body}"
    );
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    blocker.rollback().await.unwrap();
    let (code, _) = h.get("/api/apps").await;
    assert_eq!(code, 200);
}
