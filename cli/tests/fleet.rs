//! Several real api and worker processes sharing one Postgres.

mod common;

use std::collections::HashMap;

use std::time::Duration;

use common::procs::*;
use common::*;
use serde_json::{Value, json};

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let resp = http.post(url).json(&body).send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

async fn wait_all(
    http: &reqwest::Client,
    api: &str,
    ids: &[String],
    deadline: Duration,
) -> Vec<Value> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let mut done = Vec::new();
        for id in ids {
            if let Ok(resp) = http.get(format!("{api}/api/deployments/{id}")).send().await
                && let Ok(d) = resp.json::<Value>().await
                && matches!(d["status"].as_str(), Some("deployed" | "failed"))
            {
                done.push(d);
            }
        }
        if done.len() == ids.len() {
            return done;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "only {}/{} deployments finished",
            done.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn two_apis_two_workers_run_each_deploy_once_and_one_per_app() {
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let _api1 = spawn("norn-api", &db, tmp.path(), "api-1", p1);
    let _api2 = spawn("norn-api", &db, tmp.path(), "api-2", p2);
    let _w1 = spawn("norn-worker", &db, tmp.path(), "worker-1", 0);
    let _w2 = spawn("norn-worker", &db, tmp.path(), "worker-2", 0);
    let http = reqwest::Client::new();
    let apis = [
        format!("http://127.0.0.1:{p1}"),
        format!("http://127.0.0.1:{p2}"),
    ];
    for api in &apis {
        wait_api(&http, api).await;
    }

    let prefix = unique_app("fleet");
    let repo = AppRepo::create(tmp.path(), &prefix);
    let apps: Vec<String> = (0..10).map(|i| format!("{prefix}-{i}")).collect();
    for app in &apps {
        let (status, body) = post(
            &http,
            format!("{}/api/apps", apis[0]),
            fifo(spec(app, &repo, None)),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut ids = Vec::new();
    for round in 0..5 {
        for (i, app) in apps.iter().enumerate() {
            let api = &apis[(round + i) % 2];
            let (status, body) =
                post(&http, format!("{api}/api/apps/{app}/deploy"), json!({})).await;
            assert_eq!(status, 202, "{body}");
            ids.push(body["id"].as_str().unwrap().to_owned());
        }
    }
    let done = wait_all(&http, &apis[0], &ids, Duration::from_secs(600)).await;
    let failed: Vec<&Value> = done.iter().filter(|d| d["status"] != "deployed").collect();
    assert!(failed.is_empty(), "failed deployments: {failed:?}");

    // Each ran exactly once, and never two at once for one app.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let rows: Vec<(String, String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT saga_id, app, action, created_at FROM saga_events
         WHERE action IN ('deploy.start', 'deploy.complete', 'deploy.failed') ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut starts: HashMap<&str, usize> = HashMap::new();
    type Span = (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>);
    let mut intervals: HashMap<&str, Vec<Span>> = HashMap::new();
    let mut open: HashMap<&str, chrono::DateTime<chrono::Utc>> = HashMap::new();
    for (saga, app, action, at) in &rows {
        if action == "deploy.start" {
            *starts.entry(saga).or_default() += 1;
            open.insert(saga, *at);
        } else if let Some(start) = open.remove(saga.as_str()) {
            intervals.entry(app).or_default().push((start, *at));
        }
    }
    assert_eq!(starts.len(), 50);
    assert!(
        starts.values().all(|&n| n == 1),
        "a deployment started twice: {starts:?}"
    );
    for (app, mut list) in intervals {
        list.sort();
        for pair in list.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "two operations overlapped on {app}: {pair:?}"
            );
        }
    }
    remove_containers(&prefix).await;
}

#[tokio::test]
async fn killed_idle_worker_and_postgres_restart_lose_no_queued_job() {
    // A private cluster: restarting the shared one would disturb other tests.
    let (db, data) = private_cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let api_port = free_port();
    let _api = spawn("norn-api", &db, tmp.path(), "api", api_port);
    let api = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();
    wait_api(&http, &api).await;

    let mut first = spawn("norn-worker", &db, tmp.path(), "worker-a", 0);
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM apalis.workers")
            .fetch_one(&pool)
            .await
            .unwrap();
        if n > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker never registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.close().await;
    first.0.kill().unwrap(); // SIGKILL while idle
    first.0.wait().unwrap();

    let prefix = unique_app("restart");
    let repo = AppRepo::create(tmp.path(), &prefix);
    let mut ids = Vec::new();
    for i in 0..2 {
        let app = format!("{prefix}-{i}");
        assert_eq!(
            post(
                &http,
                format!("{api}/api/apps"),
                fifo(spec(&app, &repo, None))
            )
            .await
            .0,
            201
        );
        for _ in 0..2 {
            let (status, body) =
                post(&http, format!("{api}/api/apps/{app}/deploy"), json!({})).await;
            assert_eq!(status, 202, "{body}");
            ids.push(body["id"].as_str().unwrap().to_owned());
        }
    }
    // The queued jobs survive a restart with no worker alive...
    pg_ctl(&data, &["-m", "fast", "-w", "restart"]);
    let _second = spawn("norn-worker", &db, tmp.path(), "worker-b", 0);
    let done = wait_all(&http, &api, &ids[..1], Duration::from_secs(300)).await;
    assert_eq!(done[0]["status"], "deployed", "{done:?}");
    // ...and the running worker survives a restart and keeps claiming jobs.
    pg_ctl(&data, &["-m", "fast", "-w", "restart"]);
    wait_api(&http, &api).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let app = format!("{prefix}-0");
    let late = loop {
        let (status, body) = post(&http, format!("{api}/api/apps/{app}/deploy"), json!({})).await;
        if status == 202 {
            break body["id"].as_str().unwrap().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "api never recovered: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ids.push(late);

    let done = wait_all(&http, &api, &ids, Duration::from_secs(300)).await;
    // A deploy cut off mid-step by the second restart may fail, with its
    // reason recorded (resume arrives with the crash-resume issue); no queued
    // job is lost, and the job queued after the restart runs.
    assert_eq!(done.len(), 5);
    for d in &done {
        if d["status"] == "failed" {
            assert!(d["error"].as_str().is_some_and(|e| !e.is_empty()), "{d}");
        }
    }
    let last = done.iter().find(|d| d["id"] == ids[4].as_str()).unwrap();
    assert_eq!(last["status"], "deployed", "{last}");
    pg_ctl(&data, &["-m", "immediate", "stop"]);
    remove_containers(&prefix).await;
}

/// These tests deploy one app several times and expect every deploy to run.
fn fifo(mut spec: Value) -> Value {
    spec["deployPolicy"] = json!({"queue": "fifo"});
    spec
}
