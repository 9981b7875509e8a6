//! The deploy pipeline end to end: real Postgres, real Docker, real git.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use serde_json::json;

#[tokio::test]
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
            "clone", "build", "test", "snapshot", "migrate", "deploy", "healthy", "cleanup"
        ]
    );
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");

    // A second commit deploys while a probe loop hits the app.
    let v2 = repo.commit("v2");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let probe = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (http, ingress, app) = (h.http.clone(), h.ingress, app.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match app_get(&http, ingress, &app).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.push(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            failures
        })
    };
    let second = h.deploy(&app, &v2).await;
    let d = h.wait_terminal(&second).await;
    stop.store(true, Ordering::Relaxed);
    let failures = probe.await.unwrap();
    assert_eq!(d["status"], "deployed", "{d}");
    assert!(ok.load(Ordering::Relaxed) > 20, "the probe loop barely ran");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "probes failed during the switch: {failures:?}"
    );
    assert_eq!(h.fetch(&app).await.unwrap(), "v2");

    // The first release's containers are gone; only the new one runs.
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let running = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .filters(&std::collections::HashMap::from([(
                    "label",
                    vec![format!("norn.app={app}")],
                )]))
                .build(),
        ))
        .await
        .unwrap();
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(
        running[0].labels.as_ref().unwrap()["norn.deployment"],
        second
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
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");

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
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");
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

    assert_eq!(h.get("/api/apps/Not_Valid").await.0, 400);
    assert_eq!(h.post("/api/apps/Not_Valid/deploy", json!({})).await.0, 400);
    assert_eq!(h.post("/api/apps/missing/deploy", json!({})).await.0, 404);
    let (status, body) = h
        .post(
            "/api/apps/missing/deploy",
            json!({"ref": "--upload-pack=x"}),
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("ref")));
    assert_eq!(h.get("/api/deployments?status=paused").await.0, 400);
    assert_eq!(h.get("/api/deployments/not-a-uuid").await.0, 400);
    let (status, body) = h.get("/api/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["services"]["postgres"]["status"], "up");
}
