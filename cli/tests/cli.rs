//! The `norn` command itself (the built binary, as a user runs it) against a
//! running Norn: exit codes and what it prints. Real Postgres, Docker, git.

mod common;

use std::time::Duration;

use common::procs::{ProcApi, free_port, spawn_with};
use common::{AppRepo, Harness, Run, eventually, norn, spec, unique_app};
use serde_json::{Value, json};

/// The deployment id in `deployment <id> queued`.
fn queued_id(run: &Run) -> String {
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix("deployment ")?.strip_suffix(" queued"))
        .unwrap_or_else(|| panic!("no `deployment <id> queued` line:\n{run}"))
        .to_owned()
}

/// Registers an app from a fresh repository serving `v1`, with `test` as its
/// build.test command.
async fn register(h: &Harness, prefix: &str, test: &str) -> (String, AppRepo) {
    let app = unique_app(prefix);
    let repo = AppRepo::create(h.tmp.path(), &app);
    let (code, body) = h.post("/api/apps", spec(&app, &repo, Some(test))).await;
    assert_eq!(code, 201, "{body}");
    (app, repo)
}

#[tokio::test]
async fn norn_deploy_prints_each_step_and_exits_0_once_deployed() {
    let h = Harness::start().await;
    let (app, repo) = register(&h, "clideploy", "busybox true").await;
    let sha = repo.commit("v1-cli");

    let run = norn(&h.api, &["deploy", &app]).await;
    assert_eq!(run.code, 0, "{run}");
    let id = queued_id(&run);
    for step in ["clone", "build", "test", "deploy", "healthy", "cleanup"] {
        assert!(
            run.stdout.contains(&format!("▶ {step}\n")),
            "no start of {step}:\n{run}"
        );
        assert!(
            run.stdout.contains(&format!("✓ {step} (complete, ")),
            "no completion of {step}:\n{run}"
        );
    }
    for step in ["snapshot", "migrate"] {
        assert!(
            run.stdout.contains(&format!("· {step} (skipped, ")),
            "{step} not shown skipped:\n{run}"
        );
    }
    let image = format!("{app}:{}", &sha[..12]);
    assert_eq!(
        run.stdout.lines().last(),
        Some(format!("deployed {image}").as_str()),
        "{run}"
    );
    // What it printed is what happened.
    let (_, d) = h.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["status"], "deployed", "{d}");
    assert_eq!(d["imageTag"], image.as_str(), "{d}");
    assert_eq!(h.fetch(&app).await.unwrap(), "v1-cli");
}

#[tokio::test]
async fn norn_deploy_exits_1_naming_the_failing_step_and_its_output_when_the_test_fails() {
    let h = Harness::start().await;
    let (app, _repo) = register(&h, "clifail", "busybox echo tests-broke-here; exit 3").await;

    let run = norn(&h.api, &["deploy", &app]).await;
    assert_eq!(run.code, 1, "{run}");
    let id = queued_id(&run);
    assert!(run.stdout.contains("✓ build (complete, "), "{run}");
    assert!(run.stdout.contains("✗ test (failed, "), "{run}");
    // The step's own output, indented under it.
    assert!(run.stdout.contains("    tests-broke-here\n"), "{run}");
    assert!(
        run.stdout
            .contains("failed: test: \"busybox echo tests-broke-here; exit 3\" exited with 3"),
        "{run}"
    );
    assert!(!run.stdout.contains("▶ deploy"), "{run}");
    let (_, d) = h.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["failedStep"], "test", "{d}");
}

#[tokio::test]
async fn norn_deploy_of_an_unknown_app_exits_1_with_a_norn_message() {
    let h = Harness::start().await;
    let ghost = unique_app("ghost");
    let run = norn(&h.api, &["deploy", &ghost]).await;
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(
        run.stderr.trim_end(),
        format!("norn: app {ghost} is not registered (HTTP 404)"),
        "{run}"
    );
    assert!(!run.stdout.contains("queued"), "{run}");
    let (_, list) = h.get("/api/deployments").await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn norn_status_lists_the_app_and_its_deployment() {
    let h = Harness::start().await;
    let (app, _repo) = h.app_serving_v1("clistatus").await;
    let (_, list) = h.get(&format!("/api/deployments?app={app}")).await;
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let image = list[0]["imageTag"].as_str().unwrap().to_owned();

    let run = norn(&h.api, &["status"]).await;
    assert_eq!(run.code, 0, "{run}");
    let app_line = run
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(app.as_str()))
        .unwrap_or_else(|| panic!("{app} not listed:\n{run}"));
    assert_eq!(app_line.split_whitespace().nth(1), Some("api"), "{run}");
    let deployment = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("deployment {id} not listed:\n{run}"));
    let cols: Vec<&str> = deployment.split_whitespace().collect();
    assert_eq!(
        cols[1..4],
        [app.as_str(), "deployed", image.as_str()],
        "{run}"
    );
}

#[tokio::test]
async fn norn_cancel_of_an_ended_deployment_exits_1_saying_it_already_ended() {
    let h = Harness::start().await;
    let (app, repo) = h.app_serving_v1("clicancel").await;
    let (_, list) = h.get(&format!("/api/deployments?app={app}")).await;
    let id = list[0]["id"].as_str().unwrap().to_owned();

    let run = norn(&h.api, &["cancel", &id]).await;
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(
        run.stderr.trim_end(),
        format!("norn: deployment {id} already ended (deployed) (HTTP 409)"),
        "{run}"
    );
    let (_, d) = h.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["status"], "deployed", "{d}");
    assert_eq!(d["cancelRequestedBy"], Value::Null, "{d}");

    // One still in progress is canceled: exit 0.
    let slow = spec(&app, &repo, Some("busybox sleep 120"));
    assert_eq!(h.post("/api/apps", slow).await.0, 200);
    let running = h.deploy(&app, "HEAD").await;
    let run = norn(&h.api, &["cancel", &running]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.starts_with(&format!("{running}: ")), "{run}");
    let d = h.wait_terminal(&running).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(
        d["error"].as_str().unwrap().contains("canceled by api"),
        "{d}"
    );
}

#[tokio::test]
async fn a_wrong_token_exits_1_saying_the_token_is_invalid_and_queues_nothing() {
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _api = spawn_with(
        "norn-api",
        &db,
        tmp.path(),
        "api",
        port,
        &[("NORN_API_TOKEN", "right-token")],
    );
    let base = format!("http://127.0.0.1:{port}");
    let api = ProcApi::new(&base).await;
    let app = unique_app("clitoken");
    let repo = AppRepo::create(tmp.path(), &app);
    let registered = api
        .http
        .post(format!("{base}/api/apps"))
        .bearer_auth("right-token")
        .json(&spec(&app, &repo, None))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status().as_u16(), 201);

    let unauthorized = "norn: missing or invalid bearer token (HTTP 401)";
    for args in [
        vec!["--token", "wrong-token", "status"],
        vec!["status"],
        vec!["--token", "wrong-token", "deploy", &app],
    ] {
        let run = norn(&base, &args).await;
        assert_eq!(run.code, 1, "{args:?}: {run}");
        assert_eq!(run.stderr.trim_end(), unauthorized, "{args:?}: {run}");
    }
    // The right token works, and the refused deploy queued nothing.
    let run = norn(&base, &["--token", "right-token", "status"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains(&app), "{run}");
    let deployments: Value = api
        .http
        .get(format!("{base}/api/deployments?app={app}"))
        .bearer_auth("right-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deployments, json!([]));
}

#[tokio::test]
async fn norn_rollback_puts_the_previous_release_back_and_exits_0() {
    let h = Harness::start().await;
    let (app, repo) = h.app_serving_v1("clirollback").await;
    let (_, list) = h.get(&format!("/api/deployments?app={app}")).await;
    let v1 = list[0]["id"].as_str().unwrap().to_owned();
    let v1_image = list[0]["imageTag"].as_str().unwrap().to_owned();
    repo.commit("v2");
    let v2 = h.deploy(&app, "HEAD").await;
    assert_eq!(h.wait_terminal(&v2).await["status"], "deployed");
    assert_eq!(h.fetch(&app).await.unwrap(), "v2");

    let run = norn(&h.api, &["rollback", &app]).await;
    assert_eq!(run.code, 0, "{run}");
    let id = queued_id(&run);
    assert!(run.stdout.contains("✓ healthy (complete, "), "{run}");
    assert!(!run.stdout.contains("▶ build"), "{run}");
    assert_eq!(
        run.stdout.lines().last(),
        Some(format!("deployed {v1_image}").as_str()),
        "{run}"
    );
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");
    let (_, d) = h.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["kind"], "rollback", "{d}");
    assert_eq!(d["rollbackOf"], v1.as_str(), "{d}");

    // An unknown target: exit 1 with the API's reason.
    let ghost = uuid::Uuid::new_v4().to_string();
    let run = norn(&h.api, &["rollback", &app, "--to", &ghost]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.starts_with("norn: "), "{run}");
    assert!(run.stderr.contains("(HTTP 404)"), "{run}");
}

#[tokio::test]
async fn norn_nodes_lists_every_process_with_its_role_and_status() {
    let h = Harness::start().await;
    let nodes = eventually(Duration::from_secs(30), "api and worker nodes", || async {
        let (_, list) = h.get("/api/cluster/nodes").await;
        let list = list.as_array()?.clone();
        let roles: Vec<&str> = list.iter().filter_map(|n| n["role"].as_str()).collect();
        (roles.contains(&"api") && roles.contains(&"worker")).then_some(list)
    })
    .await;

    let run = norn(&h.api, &["nodes"]).await;
    assert_eq!(run.code, 0, "{run}");
    let header: Vec<&str> = run
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header[..5],
        ["id", "role", "name", "status", "jobs"],
        "{run}"
    );
    for n in &nodes {
        let id = n["id"].as_str().unwrap();
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("node {id} not listed:\n{run}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols[1..4],
            [
                n["role"].as_str().unwrap(),
                n["name"].as_str().unwrap(),
                n["status"].as_str().unwrap()
            ],
            "{run}"
        );
    }
}

#[tokio::test]
async fn norn_health_names_each_shared_service_and_exits_1_when_one_is_down() {
    let h = Harness::start().await;
    // Once the worker has reported its engine, nothing is down.
    let mut run = norn(&h.api, &["health"]).await;
    for _ in 0..50 {
        if run.code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        run = norn(&h.api, &["health"]).await;
    }
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("docker         up"), "{run}");
    for line in [
        "postgres       up",
        "appDatabases   up",
        "kv             up",
        "events         up",
    ] {
        assert!(run.stdout.contains(line), "no {line:?}:\n{run}");
    }

    // An app database server and brokers that do not answer are reported
    // down, with why.
    let broken = Harness::start_with(|c| {
        c.app_database_url = Some(norn_shared::config::Secret::new(
            "postgres://norn_provisioner@127.0.0.1:1/postgres",
        ));
        c.events_brokers = Some(vec!["127.0.0.1:1".into()]);
    })
    .await;
    let run = norn(&broken.api, &["health"]).await;
    assert!(run.stdout.contains("appDatabases   down"), "{run}");
    assert!(run.stdout.contains("events         down"), "{run}");
    assert_eq!(run.code, 1, "{run}");
    assert!(!run.stdout.contains("norn_provisioner@"), "{run}");
}
