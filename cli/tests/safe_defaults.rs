//! The default configuration is the safe one: the API will not serve a
//! non-loopback address without a token unless told to accept the risk, and
//! without the token `/api/health` says only up or degraded.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::procs::{self, Proc, free_port, wait_api};

fn api_command(db: &str, bind: &str, port: u16) -> Command {
    let mut cmd = Command::new(procs::bin("norn-api"));
    cmd.env("DATABASE_URL", db)
        .env("NORN_BIND_ADDR", bind)
        .env("NORN_PORT", port.to_string())
        .env("NORN_INGRESS_PORT", "0")
        .env_remove("NORN_API_TOKEN")
        .env_remove("NORN_ALLOW_NO_AUTH")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

async fn health(http: &reqwest::Client, base: &str, token: Option<&str>) -> serde_json::Value {
    let mut req = http.get(format!("{base}/api/health"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn the_api_refuses_to_serve_all_interfaces_without_a_token() {
    let db = norn_shared::testing::fresh_database().await;
    let port = free_port();
    let child = api_command(&db, "0.0.0.0", port).spawn().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("norn-api exited by itself")
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "norn-api served 0.0.0.0 without a token"
    );
    assert!(
        stderr.contains("refusing to serve the API on 0.0.0.0")
            && stderr.contains("NORN_API_TOKEN"),
        "{stderr}"
    );
    // Nothing answers on that port.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test]
async fn allow_no_auth_serves_all_interfaces_and_says_so() {
    let db = norn_shared::testing::fresh_database().await;
    let port = free_port();
    let mut cmd = api_command(&db, "0.0.0.0", port);
    cmd.env("NORN_ALLOW_NO_AUTH", "true").stderr(Stdio::null());
    let _api = Proc(cmd.spawn().unwrap());
    wait_api(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}")).await;
}

#[tokio::test]
async fn without_the_token_health_says_only_up_or_degraded() {
    let db = norn_shared::testing::fresh_database().await;
    let port = free_port();
    let mut cmd = api_command(&db, "127.0.0.1", port);
    cmd.env("NORN_API_TOKEN", "s3cret-token")
        .stderr(Stdio::null());
    let _api = Proc(cmd.spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_api(&http, &base).await;
    let anonymous = health(&http, &base, None).await;
    let keys: Vec<&String> = anonymous.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["status"], "{anonymous}");
    // No worker runs here: the engine state is unknown, so degraded.
    assert_eq!(anonymous["status"], "degraded");
    let detailed = health(&http, &base, Some("s3cret-token")).await;
    assert_eq!(
        detailed["services"]["postgres"]["status"], "up",
        "{detailed}"
    );
    assert_eq!(
        detailed["services"]["docker"]["status"], "down",
        "{detailed}"
    );
}
