//! The deploy pipeline end to end: real Postgres, real Docker, real git.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bollard::models::ContainerSummaryStateEnum;
use common::*;
use serde_json::json;

/// Longest a single request through the ingress may take while traffic
/// switches. Answers take milliseconds normally; on a heavily oversubscribed
/// 2-core machine a correct system was seen at 0.84 s (load 15+, during the
/// build) and at 2.15 s (a fresh-clone CI run, four deploy tests at once).
/// The stalls this guards against take longer: a connection to a retired
/// upstream on the bridge fails only when ARP gives up (3 s), and the old
/// 5 s client timeout let a 4.9 s stall pass. A stall is downtime too.
const MAX_PROBE_LATENCY: Duration = Duration::from_millis(2_500);

/// A container of an app as Docker lists it with `all = true` (stopped ones
/// included, so "gone" means removed, not merely stopped).
#[derive(Debug)]
struct AppContainer {
    #[allow(dead_code)] // read in failure messages
    name: String,
    deployment: Option<String>,
    running: bool,
}

async fn app_containers(app: &str) -> Vec<AppContainer> {
    all_containers()
        .await
        .into_iter()
        .filter(|c| c.labels.as_ref().and_then(|l| l.get("norn.app")) == Some(&app.to_owned()))
        .map(|c| AppContainer {
            name: c
                .names
                .as_ref()
                .and_then(|n| n.first().cloned())
                .unwrap_or_default(),
            deployment: c
                .labels
                .as_ref()
                .and_then(|l| l.get("norn.deployment").cloned()),
            running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
        })
        .collect()
}

/// The deployment the ingress routes `app` to, from `app_routes`.
async fn routed_deployment(h: &Harness, app: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT deployment_id FROM app_routes WHERE app = $1 ORDER BY process")
        .bind(app)
        .fetch_all(&h.pool)
        .await
        .unwrap()
}

/// The old release keeps serving: it is the only container of `app` (running
/// or not), it runs, and the route and the ingress still lead to it.
async fn only_the_old_release_is_left(h: &Harness, app: &str, failed: &str, expect_body: &str) {
    let old = routed_deployment(h, app).await;
    assert_eq!(old.len(), 1, "{app}: routes {old:?}");
    assert_ne!(old[0], failed, "{app}: the failed release is routed");
    // The failed release's instances are removed by the worker right after it
    // records the failure; give it that moment.
    let left = eventually(
        Duration::from_secs(30),
        "the failed release's containers removed",
        || async {
            let list = app_containers(app).await;
            list.iter()
                .all(|c| c.deployment.as_deref() != Some(failed))
                .then_some(list)
        },
    )
    .await;
    assert_eq!(left.len(), 1, "{app}: {left:?}");
    assert_eq!(
        left[0].deployment.as_deref(),
        Some(old[0].as_str()),
        "{left:?}"
    );
    assert!(left[0].running, "the old release is not running: {left:?}");
    for _ in 0..5 {
        assert_eq!(h.fetch(app).await.unwrap(), expect_body);
    }
}

// Multi-threaded, as the API runs in production (`#[tokio::main]`): on a
// current-thread runtime the in-process API, its ingress and this test's
// own polling share one thread, and a probe waits for whatever else it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploys_end_to_end_and_switches_without_downtime() {
    let h = Harness::start().await;
    let app = unique_app("e2e");
    let repo = AppRepo::create(h.tmp.path(), &app);
    let (status, body) = h
        .post("/api/apps", spec(&app, &repo, Some("test -f /www/health")))
        .await;
    assert_eq!(status, 201, "{body}");

    let first = h.deploy(&app, "HEAD").await;
    let d = h.wait_terminal(&first).await;
    assert_eq!(d["status"], "deployed", "{d}");
    let head = git2::Repository::open(&repo.dir)
        .unwrap()
        .head()
        .unwrap()
        .target()
        .unwrap()
        .to_string();
    assert_eq!(d["commitSha"], head.as_str());
    assert_eq!(d["imageTag"], format!("{app}:{}", &head[..12]).as_str());
    let steps: Vec<&str> = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "forge", "clone", "build", "test", "snapshot", "migrate", "deploy", "healthy",
            "cleanup"
        ]
    );
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");

    // A second commit deploys while a probe loop hits the app; every answer
    // is recorded with how long it took.
    let v2 = repo.commit("v2");
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let probe = {
        let (stop, answered) = (stop.clone(), answered.clone());
        let (http, ingress, app) = (h.http.clone(), h.ingress, app.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let answer = app_get(&http, ingress, &app).await;
                seen.push((began.elapsed(), answer));
                answered.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };
    let second = h.deploy(&app, &v2).await;
    let d = h.wait_terminal(&second).await;
    // Keep probing once the old release has been retired.
    let at_end = answered.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(30),
        "probes after the deploy",
        || async { (answered.load(Ordering::Relaxed) >= at_end + 20).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let seen = probe.await.unwrap();
    assert_eq!(d["status"], "deployed", "{d}");

    let failures: Vec<_> = seen.iter().filter(|(_, a)| a.is_err()).collect();
    assert!(
        failures.is_empty(),
        "probes failed during the switch: {failures:?}"
    );
    let slowest = seen.iter().map(|(t, _)| *t).max().unwrap();
    let mut by_time: Vec<_> = seen.iter().enumerate().collect();
    by_time.sort_by_key(|(_, (t, _))| std::cmp::Reverse(*t));
    assert!(
        slowest < MAX_PROBE_LATENCY,
        "a request stalled {slowest:?} during the switch (bound {MAX_PROBE_LATENCY:?}); \
         slowest (probe #, time, answer) of {}: {:?}",
        seen.len(),
        &by_time[..by_time.len().min(5)]
    );
    // The probe spanned the switch: v1 answered, then v2, and once v2 answered
    // v1 never did again.
    let bodies: Vec<&str> = seen.iter().map(|(_, a)| a.as_deref().unwrap()).collect();
    let switch_at = bodies
        .iter()
        .position(|b| *b == "v2")
        .expect("v2 never answered");
    assert!(switch_at > 0, "the probe never saw v1");
    assert!(
        bodies[..switch_at].iter().all(|b| *b == "v1")
            && bodies[switch_at..].iter().all(|b| *b == "v2"),
        "answers were not v1 then v2: {bodies:?}"
    );
    assert!(bodies.len() - switch_at >= 20, "{bodies:?}");
    let slowest_at = seen.iter().position(|(t, _)| *t == slowest).unwrap();
    eprintln!(
        "probe: {} requests ({switch_at} v1, {} v2), slowest {slowest:?} (request {slowest_at})",
        bodies.len(),
        bodies.len() - switch_at
    );
    assert_eq!(h.fetch(&app).await.unwrap(), "v2");

    // The first release's containers are gone (not merely stopped); only the
    // new one is left, and it runs.
    let left = app_containers(&app).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        left[0].deployment.as_deref(),
        Some(second.as_str()),
        "{left:?}"
    );
    assert!(left[0].running, "{left:?}");
    assert_eq!(
        routed_deployment(&h, &app).await,
        std::slice::from_ref(&second)
    );
    remove_containers(&app).await;
}

#[tokio::test]
async fn failing_test_fails_at_testing_and_the_old_release_keeps_serving() {
    let h = Harness::start().await;
    let (app, repo) = h.app_serving_v1("failtest").await;

    let v2 = repo.commit("v2");
    assert_eq!(
        h.post(
            "/api/apps",
            spec(&app, &repo, Some("echo boom-from-tests; exit 3"))
        )
        .await
        .0,
        200
    );
    let second = h.deploy(&app, &v2).await;
    let d = h.wait_terminal(&second).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["failedStep"], "test");
    assert!(
        d["error"].as_str().unwrap().contains("exited with 3"),
        "{d}"
    );
    let test_step = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "test")
        .unwrap();
    assert_eq!(test_step["status"], "failed");
    assert!(
        test_step["output"]
            .as_str()
            .unwrap()
            .contains("boom-from-tests"),
        "{test_step}"
    );
    // Nothing of the failed release is left (its test container included);
    // the old release still runs and serves.
    only_the_old_release_is_left(&h, &app, &second, "v1").await;

    let (_, events) = h.get(&format!("/api/deployments/{second}/events")).await;
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.first(), Some(&"deploy.queued"));
    assert_eq!(actions.last(), Some(&"deploy.failed"));
    remove_containers(&app).await;
}

#[tokio::test]
async fn unhealthy_release_is_removed_and_the_old_one_keeps_serving() {
    let h = Harness::start().await;
    let (app, repo) = h.app_serving_v1("unhealthy").await;

    std::fs::remove_file(repo.dir.join("www/health")).unwrap();
    let v2 = repo.commit("v2-broken");
    let second = h.deploy(&app, &v2).await;
    let d = h.wait_terminal(&second).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["failedStep"], "healthy");
    // The new release did start (it failed its health check, not its start).
    let deploy_step = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "deploy")
        .unwrap();
    assert_eq!(deploy_step["status"], "complete", "{d}");
    assert!(
        deploy_step["output"].as_str().unwrap().contains("started"),
        "{deploy_step}"
    );
    // No container of it is left, running or stopped; the old one runs and
    // serves.
    only_the_old_release_is_left(&h, &app, &second, "v1").await;
    remove_containers(&app).await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_400() {
    let h = Harness::start().await;
    let (status, body) = h
        .post(
            "/api/apps",
            json!({"name": "ok", "processes": {"web": {"port": 70000}}}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "processes.web.port");
    assert_eq!(body["error"], "processes.web.port: must be 1..65535");

    let resp = h
        .http
        .post(format!("{}/api/apps", h.api))
        .header("content-type", "application/yaml")
        .body("name: x\nprocesses:\n  web:\n    port: 80\n    health: {path: nope}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["field"], "processes.web.health.path");

    // Every 400 says what is wrong in its body, not just its status.
    let clear = |(status, body): (u16, serde_json::Value), what: &str| {
        assert_eq!(status, 400, "{what}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(!error.trim().is_empty(), "{what}: no error message: {body}");
        body
    };
    clear(h.get("/api/apps/Not_Valid").await, "app name");
    clear(
        h.post("/api/apps/Not_Valid/deploy", json!({})).await,
        "deploy app name",
    );
    assert_eq!(h.post("/api/apps/missing/deploy", json!({})).await.0, 404);
    let body = clear(
        h.post(
            "/api/apps/missing/deploy",
            json!({"ref": "--upload-pack=x"}),
        )
        .await,
        "ref",
    );
    assert_eq!(body["field"], "ref");
    clear(
        h.get("/api/deployments?status=paused").await,
        "status filter",
    );
    clear(h.get("/api/deployments/not-a-uuid").await, "deployment id");
    // Malformed query strings get the same JSON error as everything else.
    let body = clear(h.get("/api/deployments?limit=ten").await, "limit");
    assert!(
        body["error"].as_str().unwrap().contains("invalid query"),
        "{body}"
    );
    let body = clear(
        h.get("/api/deployments/01900000-0000-7000-8000-000000000000/logs?step=nope")
            .await,
        "log step",
    );
    assert_eq!(body["field"], "step", "{body}");
    let (status, body) = h.get("/api/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["services"]["postgres"]["status"], "up");
}
