//! Several real api and worker processes sharing one Postgres.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::procs::*;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// Every request path the apps' test steps sent, in arrival order: the
/// outside witness of which test steps ran, how often and in what order.
type Hits = Arc<Mutex<Vec<String>>>;

async fn hit_counter() -> (u16, Hits) {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits: Hits = Arc::default();
    let seen = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some(path) = req.split_whitespace().nth(1) {
                    seen.lock().unwrap().push(path.to_owned());
                }
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                    )
                    .await;
            });
        }
    });
    (port, hits)
}

/// A fifo app whose test step reports the version it was built from
/// (`www/index.html`, which is also what the release serves) to the counter,
/// once on entry and once on exit.
fn counted_spec(app: &str, repo: &AppRepo, counter: u16) -> Value {
    let host = common::host_from_containers();
    let hit = |what: &str| {
        format!("busybox wget -q -O- http://{host}:{counter}/{what}/$(busybox cat /www/index.html)")
    };
    let mut spec = spec(
        app,
        repo,
        Some(&format!("{} && {}", hit("begin"), hit("end"))),
    );
    spec["deployPolicy"] = json!({"queue": "fifo"});
    spec
}

/// Commits a version of its own and deploys exactly that commit; returns
/// the deployment id.
async fn deploy_version(
    http: &reqwest::Client,
    api: &str,
    repo: &AppRepo,
    app: &str,
    version: &str,
) -> String {
    let sha = repo.commit(version);
    let (status, body) = post(
        http,
        format!("{api}/api/apps/{app}/deploy"),
        json!({"ref": sha}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Polls the ingress until `app` serves `version` (routes reload within 10 s).
async fn serves(http: &reqwest::Client, ingress: std::net::SocketAddr, app: &str, version: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = app_get(http, ingress, app).await;
        if got.as_deref() == Ok(version) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{app} serves {got:?}, not {version}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn two_apis_two_workers_run_each_deploy_once_and_one_per_app() {
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let (counter, hits) = hit_counter().await;
    let (p1, p2, ingress_port) = (free_port(), free_port(), free_port());
    let ingress: std::net::SocketAddr = ([127, 0, 0, 1], ingress_port).into();
    let ingress_env = ingress_port.to_string();
    let _api1 = spawn_with(
        "norn-api",
        &db,
        tmp.path(),
        "api-1",
        p1,
        &[("NORN_INGRESS_PORT", &ingress_env)],
    );
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
            counted_spec(app, &repo, counter),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    // Rounds over the ten apps (five; `NORN_FLEET_ROUNDS`, at least 2),
    // alternating the two APIs; every deploy builds a commit of its own,
    // `<app>/<round>`.
    let rounds: usize = std::env::var("NORN_FLEET_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5)
        .max(2);
    let mut ids = Vec::new();
    let mut version_of: HashMap<String, String> = HashMap::new();
    for round in 0..rounds {
        for (i, app) in apps.iter().enumerate() {
            let api = &apis[(round + i) % 2];
            let version = format!("{app}/{round}");
            let id = deploy_version(&http, api, &repo, app, &version).await;
            version_of.insert(id.clone(), version);
            ids.push(id);
        }
    }
    let done = wait_all(&http, &apis[0], &ids, Duration::from_secs(600)).await;
    let failed: Vec<&Value> = done.iter().filter(|d| d["status"] != "deployed").collect();
    assert!(failed.is_empty(), "failed deployments: {failed:?}");
    // No worker took any deployment on twice.
    for d in &done {
        assert_eq!(d["attempts"], 1, "{d}");
    }

    // Each ran exactly once, in the order it was queued, never two at once
    // for one app: the test steps themselves say so. Each reported its
    // version on entry and on exit; per app the reports must read
    // begin 0, end 0, begin 1, end 1, ...
    let log = hits.lock().unwrap().clone();
    let mut per_app: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for path in &log {
        let (what, version) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or_else(|| panic!("unexpected request {path}"));
        let app = version.rsplit_once('/').map(|(app, _)| app).unwrap_or("");
        let app = apps
            .iter()
            .find(|a| a.as_str() == app)
            .unwrap_or_else(|| panic!("request from an unknown app: {path}"));
        per_app
            .entry(app)
            .or_default()
            .push(format!("{what} {version}"));
    }
    for app in &apps {
        let want: Vec<String> = (0..rounds)
            .flat_map(|r| [format!("begin {app}/{r}"), format!("end {app}/{r}")])
            .collect();
        assert_eq!(
            per_app.get(app.as_str()),
            Some(&want),
            "{app}: test steps ran out of order, twice or overlapping"
        );
    }

    // The saga agrees: one start per deployment, no resume, no requeue, and
    // the start..end spans of one app never overlap.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let rows: Vec<(String, String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT saga_id, app, action, created_at FROM saga_events
         WHERE category = 'deploy' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut starts: HashMap<&str, usize> = HashMap::new();
    type Span = (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>);
    let mut intervals: HashMap<&str, Vec<Span>> = HashMap::new();
    let mut open: HashMap<&str, chrono::DateTime<chrono::Utc>> = HashMap::new();
    let mut recovered = Vec::new();
    for (saga, app, action, at) in &rows {
        match action.as_str() {
            "deploy.start" => {
                *starts.entry(saga).or_default() += 1;
                open.insert(saga, *at);
            }
            "deploy.resumed" | "deploy.requeued" => recovered.push((saga, action)),
            "deploy.complete" | "deploy.failed" => {
                if let Some(start) = open.remove(saga.as_str()) {
                    intervals.entry(app).or_default().push((start, *at));
                }
            }
            _ => {}
        }
    }
    assert_eq!(starts.len(), ids.len());
    assert!(
        starts.values().all(|&n| n == 1),
        "a deployment started twice: {starts:?}"
    );
    assert!(recovered.is_empty(), "nothing failed, yet: {recovered:?}");
    for (app, mut list) in intervals {
        list.sort();
        for pair in list.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "two operations overlapped on {app}: {pair:?}"
            );
        }
    }

    // Each deployment built the commit it was asked for, and each app now
    // serves its last round.
    for d in &done {
        let id = d["id"].as_str().unwrap();
        let (sha,): (Option<String>,) =
            sqlx::query_as("SELECT commit_sha FROM deployments WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        let git = git2::Repository::open(&repo.dir).unwrap();
        let commit = git
            .find_commit(git2::Oid::from_str(sha.as_deref().unwrap()).unwrap())
            .unwrap();
        assert_eq!(commit.message().unwrap(), version_of[id], "{d}");
    }
    for app in &apps {
        serves(&http, ingress, app, &format!("{app}/{}", rounds - 1)).await;
    }
    remove_containers(&prefix).await;
}

#[tokio::test]
async fn killed_idle_worker_and_postgres_restart_lose_no_queued_job() {
    // A private cluster: restarting the shared one would disturb other tests.
    let (db, data) = private_cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let (counter, hits) = hit_counter().await;
    let (api_port, ingress_port) = (free_port(), free_port());
    let ingress: std::net::SocketAddr = ([127, 0, 0, 1], ingress_port).into();
    let _api = spawn_with(
        "norn-api",
        &db,
        tmp.path(),
        "api",
        api_port,
        &[("NORN_INGRESS_PORT", &ingress_port.to_string())],
    );
    let api = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();
    wait_api(&http, &api).await;

    let mut first = spawn("norn-worker", &db, tmp.path(), "worker-a", 0);
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "the worker to register",
        || async {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM apalis.workers")
                .fetch_one(&pool)
                .await
                .unwrap();
            (n > 0).then_some(())
        },
    )
    .await;
    pool.close().await;
    first.0.kill().unwrap(); // SIGKILL while idle
    first.0.wait().unwrap();

    let prefix = unique_app("restart");
    let repo = AppRepo::create(tmp.path(), &prefix);
    let mut ids = Vec::new();
    let mut versions = Vec::new();
    for i in 0..2 {
        let app = format!("{prefix}-{i}");
        let (status, body) = post(
            &http,
            format!("{api}/api/apps"),
            counted_spec(&app, &repo, counter),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        for round in 0..2 {
            let version = format!("{app}/{round}");
            ids.push(deploy_version(&http, &api, &repo, &app, &version).await);
            versions.push(version);
        }
    }
    // The queued jobs survive a restart with no worker alive...
    pg_ctl(&data, &["-m", "fast", "-w", "restart"]);
    let _second = spawn("norn-worker", &db, tmp.path(), "worker-b", 0);
    let done = wait_all(&http, &api, &ids[..1], Duration::from_secs(300)).await;
    assert_eq!(done[0]["status"], "deployed", "{done:?}");
    assert_eq!(done[0]["attempts"], 1, "{done:?}");
    // ...and the running worker survives a restart and keeps claiming jobs.
    pg_ctl(&data, &["-m", "fast", "-w", "restart"]);
    wait_api(&http, &api).await;
    let app = format!("{prefix}-0");
    let version = format!("{app}/late");
    let sha = repo.commit(&version);
    let late = eventually(Duration::from_secs(60), "the api to recover", || async {
        let (status, body) = post(
            &http,
            format!("{api}/api/apps/{app}/deploy"),
            json!({"ref": sha}),
        )
        .await;
        (status == 202).then(|| body["id"].as_str().unwrap().to_owned())
    })
    .await;
    ids.push(late);
    versions.push(version);

    // Every job queued ends deployed: one cut off mid-step by the second
    // restart is resumed (its step log says where), not failed.
    let done = wait_all(&http, &api, &ids, Duration::from_secs(300)).await;
    assert_eq!(done.len(), ids.len());
    for d in &done {
        assert_eq!(d["status"], "deployed", "{done:#?}");
    }
    let late = done.iter().find(|d| d["id"] == ids[4].as_str()).unwrap();
    assert_eq!(late["attempts"], 1, "queued after the restart: {late}");
    // The test step of every queued commit ran (more than once only for a
    // deploy the restart cut off in that very step), and nothing else did.
    let log = hits.lock().unwrap().clone();
    for version in &versions {
        let ran = log
            .iter()
            .filter(|p| **p == format!("/end/{version}"))
            .count();
        assert!(ran >= 1, "the test step of {version} never ran: {log:?}");
    }
    assert!(
        log.iter()
            .all(|p| versions.iter().any(|v| p.ends_with(&format!("/{v}")))),
        "{log:?}"
    );
    // Each app serves its newest commit.
    serves(&http, ingress, &format!("{prefix}-0"), &versions[4]).await;
    serves(&http, ingress, &format!("{prefix}-1"), &versions[3]).await;
    pg_ctl(&data, &["-m", "immediate", "stop"]);
    remove_containers(&prefix).await;
}
