//! Cancel, step deadlines, supersede and the per-app queue limit, against a
//! real Postgres, the real Docker engine and git repositories in temp dirs.

mod common;

use std::time::Duration;

use common::{AppRepo, Harness, eventually, unique_app};
use serde_json::{Value, json};

/// An app whose test step sleeps for the number of seconds in `www/delay`
/// of the deployed commit, so one commit deploys at once and the next one
/// sits in its test step.
fn slow_test_spec(app: &str, repo: &AppRepo, policy: Value) -> Value {
    json!({
        "name": app,
        "repo": {"url": repo.url()},
        "build": {"test": "busybox sleep $(busybox cat /www/delay)"},
        "processes": {"web": {"port": 8080, "health": {"path": "/health", "timeout": "2s"}}},
        "deployPolicy": policy,
    })
}

fn set_delay(repo: &AppRepo, secs: u32, version: &str) -> String {
    std::fs::write(repo.dir.join("www/delay"), secs.to_string()).unwrap();
    repo.commit(version)
}

async fn register(h: &Harness, prefix: &str, policy: Value) -> (String, AppRepo) {
    let app = unique_app(prefix);
    let repo = AppRepo::create(h.tmp.path(), &app);
    set_delay(&repo, 0, "v1");
    let (status, body) = h
        .post("/api/apps", slow_test_spec(&app, &repo, policy))
        .await;
    assert_eq!(status, 201, "{body}");
    (app, repo)
}

async fn status_of(h: &Harness, id: &str) -> Value {
    h.get(&format!("/api/deployments/{id}")).await.1
}

async fn wait_status(h: &Harness, id: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let d = status_of(h, id).await;
        if d["status"] == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deployment {id} never became {want}: {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The deployment ends (its row) just before its worker lets the lease go.
async fn lease_released(h: &Harness, app: &str) {
    eventually(
        Duration::from_secs(10),
        "the app lease released",
        || async {
            let lease: Option<(String,)> =
                sqlx::query_as("SELECT holder FROM app_leases WHERE app = $1")
                    .bind(app)
                    .fetch_optional(&h.pool)
                    .await
                    .unwrap();
            lease.is_none().then_some(())
        },
    )
    .await;
}

async fn containers_named(prefix: &str) -> Vec<String> {
    common::all_containers()
        .await
        .into_iter()
        .filter_map(|c| c.names?.first().cloned())
        .map(|n| n.trim_start_matches('/').to_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[tokio::test]
async fn cancel_ends_a_queued_deploy_at_once_and_stops_a_running_one() {
    let h = Harness::start().await;
    let (app, repo) = register(&h, "cancel", json!({"queue": "fifo"})).await;
    let first = h.deploy(&app, "HEAD").await;
    assert_eq!(h.wait_terminal(&first).await["status"], "deployed");

    set_delay(&repo, 120, "v2");
    let running = h.deploy(&app, "HEAD").await;
    let queued = h.deploy(&app, "HEAD").await;
    wait_status(&h, &running, "testing").await;
    let test_container = format!("{app}-test-");
    eventually(Duration::from_secs(30), "test container", || async {
        (!containers_named(&test_container).await.is_empty()).then_some(())
    })
    .await;

    // Queued: ends at once, nothing ran.
    let (code, body) = h
        .post(&format!("/api/deployments/{queued}/cancel"), json!({}))
        .await;
    assert_eq!(code, 200, "{body}");
    let d = status_of(&h, &queued).await;
    assert_eq!(d["status"], "failed");
    assert!(d["error"].as_str().unwrap().contains("canceled"), "{d}");

    // Running: its test container is killed and it fails within 5 s.
    let asked = std::time::Instant::now();
    let (code, body) = h
        .post(&format!("/api/deployments/{running}/cancel"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    let d = h.wait_terminal(&running).await;
    let took = asked.elapsed();
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["failedStep"], "test", "{d}");
    assert!(d["error"].as_str().unwrap().contains("canceled"), "{d}");
    assert!(took < Duration::from_secs(5), "cancel took {took:?}");
    assert!(containers_named(&test_container).await.is_empty());
    // The previous release still serves, and the app is free again.
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");
    lease_released(&h, &app).await;

    // A terminal deployment cannot be canceled; an unknown one is 404.
    let (code, _) = h
        .post(&format!("/api/deployments/{running}/cancel"), json!({}))
        .await;
    assert_eq!(code, 409);
    let (code, _) = h
        .post(
            &format!("/api/deployments/{}/cancel", uuid::Uuid::new_v4()),
            json!({}),
        )
        .await;
    assert_eq!(code, 404);

    // The saga trail says who did what.
    let (_, events) = h.get(&format!("/api/deployments/{running}/events")).await;
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"deploy.cancel_requested"), "{actions:?}");
    assert_eq!(actions.last(), Some(&"deploy.failed"), "{actions:?}");
}

#[tokio::test]
async fn a_step_past_its_deadline_is_killed_and_fails() {
    let h = Harness::start().await;
    let (app, repo) = register(&h, "deadline", json!({"timeouts": {"test": "2s"}})).await;
    set_delay(&repo, 60, "v1-slow");
    let id = h.deploy(&app, "HEAD").await;
    let d = h.wait_terminal(&id).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["failedStep"], "test");
    assert_eq!(d["error"], "test: timed out after 2s", "{d}");
    assert!(containers_named(&format!("{app}-test-")).await.is_empty());
    lease_released(&h, &app).await;
}

#[tokio::test]
async fn a_newer_deploy_supersedes_the_queued_one() {
    let h = Harness::start().await;
    let (app, repo) = register(&h, "supersede", json!({})).await;
    set_delay(&repo, 3, "v2");
    let running = h.deploy(&app, "HEAD").await;
    wait_status(&h, &running, "testing").await;
    let older = h.deploy(&app, "HEAD").await;
    let (code, body) = h.post(&format!("/api/apps/{app}/deploy"), json!({})).await;
    assert_eq!(code, 202, "{body}");
    let newer = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["superseded"], json!([older]));

    let d = status_of(&h, &older).await;
    assert_eq!(d["status"], "failed");
    assert_eq!(d["error"], format!("superseded by {newer}"));
    assert_eq!(h.wait_terminal(&running).await["status"], "deployed");
    assert_eq!(h.wait_terminal(&newer).await["status"], "deployed");
    // The superseded one never ran a step.
    assert_eq!(status_of(&h, &older).await["steps"], json!([]));
}

#[tokio::test]
async fn fifo_queue_past_the_limit_gets_429_with_retry_after() {
    let h = Harness::start().await;
    let (app, repo) = register(&h, "limit", json!({"queue": "fifo"})).await;
    set_delay(&repo, 120, "v1-slow");
    let running = h.deploy(&app, "HEAD").await;
    wait_status(&h, &running, "testing").await;
    let limit = h.config.max_queued_per_app;
    let mut queued = Vec::new();
    for _ in 0..limit {
        queued.push(h.deploy(&app, "HEAD").await);
    }
    let resp = h
        .http
        .post(format!("{}/api/apps/{app}/deploy", h.api))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("NORN_MAX_QUEUED_PER_APP"),
        "{body}"
    );
    // Nothing half-written: still exactly `limit` waiting.
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM deployments WHERE app = $1 AND status = 'queued'")
            .bind(&app)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(n, limit);
    for id in queued.iter().chain([&running]) {
        let (code, body) = h
            .post(&format!("/api/deployments/{id}/cancel"), json!({}))
            .await;
        assert!(code == 200 || code == 202, "{body}");
    }
    assert_eq!(h.wait_terminal(&running).await["status"], "failed");
}
