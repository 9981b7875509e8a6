//! Cancel (in every step, and after the traffic switch), step deadlines,
//! supersede, the per-app queue limit and `NORN_DEPLOY_MAX_ATTEMPTS`, against a
//! real Postgres, the real Docker engine and git repositories in temp dirs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::procs::{Proc, ProcApi, free_port, spawn_with};
use common::{AppRepo, Harness, all_containers, app_get, eventually, unique_app};
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

    // Running: its test container is killed and it fails well before the
    // step's 120 s would have ended on its own.
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
    assert!(took < CANCEL_BOUND, "cancel took {took:?}");
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

// ---------------------------------------------------------------------------
// Cancel in every step. Each test deploys v1, then a v2 that hangs in one
// step for minutes, cancels it there and checks: the deployment ends `failed`
// with `<step>: canceled by api` within seconds, nothing of it is left on the
// Docker engine (stopped containers included), and v1 still serves.

/// Far below what any hanging step would take (minutes), far above a cancel
/// on a loaded machine (the watcher re-checks every 2 s at worst; removing a
/// container from the app network took up to 10 s each with the whole suite
/// starting containers at once).
const CANCEL_BOUND: Duration = Duration::from_secs(30);

/// Names of every container (running or not) labelled with `deployment`.
async fn containers_of(deployment: &str) -> Vec<String> {
    all_containers()
        .await
        .into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get("norn.deployment"))
                .is_some_and(|d| d == deployment)
        })
        .filter_map(|c| c.names?.first().cloned())
        .collect()
}

/// Waits until `step` is the running step of deployment `id`.
async fn wait_step_running(h: &Harness, id: &str, step: &str) {
    eventually(
        Duration::from_secs(120),
        &format!("{id} running {step}"),
        || async {
            let d = status_of(h, id).await;
            let last = d["steps"].as_array()?.last()?.clone();
            (last["step"] == step && last["status"] == "running").then_some(())
        },
    )
    .await;
}

/// Cancels the running deployment `id` and checks that it ends failed in
/// `step` with the cancel as its reason, within [`CANCEL_BOUND`], with none of
/// its containers left, the app lease free and `v1` still serving.
async fn cancel_and_expect_stopped_in(h: &Harness, app: &str, id: &str, step: &str) -> Value {
    let asked = std::time::Instant::now();
    let (code, body) = h
        .post(&format!("/api/deployments/{id}/cancel"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    let d = h.wait_terminal(id).await;
    let took = asked.elapsed();
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["failedStep"], step, "{d}");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("{step}: canceled by api")),
        "{d}"
    );
    assert!(took < CANCEL_BOUND, "cancel in {step} took {took:?}");
    assert_eq!(d["cancelRequestedBy"], "api", "{d}");
    // The failed row is written after the attempt's containers are removed.
    let left = containers_of(id).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(h.fetch(app).await.unwrap(), "v1");
    lease_released(h, app).await;
    d
}

/// A busybox `httpd` app whose `/health` is fine, with `extra(app)` merged
/// into its spec; registered and deployed (v1, `www/delay` 0).
async fn serving_v1(h: &Harness, prefix: &str, extra: fn(&str) -> Value) -> (String, AppRepo) {
    let app = unique_app(prefix);
    let repo = AppRepo::create(h.tmp.path(), &app);
    set_delay(&repo, 0, "v1");
    let mut spec = common::spec(&app, &repo, None);
    for (k, v) in extra(&app).as_object().unwrap() {
        spec[k] = v.clone();
    }
    h.register_and_deploy(spec).await;
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");
    (app, repo)
}

/// An HTTP server that accepts connections and never answers: a `git clone`
/// from it hangs. Counts the connections (the clone reached it).
async fn silent_git_server() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(sock);
        }
    });
    (port, connections)
}

#[tokio::test]
async fn cancel_during_the_clone_fails_the_deploy_and_keeps_the_previous_release() {
    // The silent server speaks plain http.
    let h = Harness::start_with(|c| c.git_policy.allow_insecure = true).await;
    let (app, repo) = serving_v1(&h, "cancelclone", |_| json!({})).await;
    // The same app, now cloned from a server that never answers.
    let (port, connections) = silent_git_server().await;
    let mut hanging = common::spec(&app, &repo, None);
    hanging["repo"]["url"] = json!(format!("http://127.0.0.1:{port}/{app}.git"));
    let (code, body) = h.post("/api/apps", hanging).await;
    assert_eq!(code, 200, "{body}");
    let id = h.deploy(&app, "HEAD").await;
    wait_step_running(&h, &id, "clone").await;
    eventually(Duration::from_secs(30), "the clone to connect", || async {
        (connections.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    let d = cancel_and_expect_stopped_in(&h, &app, &id, "clone").await;
    assert_eq!(d["commitSha"], Value::Null, "{d}");
}

#[tokio::test]
async fn cancel_during_the_build_stops_the_docker_build_and_keeps_the_previous_release() {
    let h = Harness::start().await;
    let (app, repo) = serving_v1(&h, "cancelbuild", |_| json!({})).await;
    // v2's build runs a RUN step for five minutes; its intermediate container
    // carries the app name in its command.
    let dockerfile = std::fs::read_to_string(repo.dir.join("Dockerfile")).unwrap();
    std::fs::write(
        repo.dir.join("Dockerfile"),
        format!("{dockerfile}RUN busybox sleep 300 && busybox echo {app}\n"),
    )
    .unwrap();
    let sha = repo.commit("v2");
    let build_containers = || async {
        all_containers()
            .await
            .into_iter()
            .filter(|c| {
                c.command
                    .as_deref()
                    .is_some_and(|cmd| cmd.contains("sleep 300") && cmd.contains(&app))
            })
            .count()
    };
    let id = h.deploy(&app, "HEAD").await;
    wait_step_running(&h, &id, "build").await;
    eventually(Duration::from_secs(60), "the RUN step running", || async {
        (build_containers().await > 0).then_some(())
    })
    .await;
    cancel_and_expect_stopped_in(&h, &app, &id, "build").await;
    // The engine stops the build when the worker hangs up: its RUN container
    // goes away and no image is tagged.
    eventually(
        Duration::from_secs(20),
        "the build container removed",
        || async { (build_containers().await == 0).then_some(()) },
    )
    .await;
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let image = format!("{app}:{}", &sha[..12]);
    assert!(
        docker.inspect_image(&image).await.is_err(),
        "{image} was built"
    );
}

/// Whether a `pg_dump` of `database` is running on this machine.
fn pg_dump_running(database: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
            let cmd = String::from_utf8_lossy(&c);
            cmd.contains("pg_dump") && cmd.contains(database)
        })
    })
}

/// An app with a database (its name is the app's, `_` for `-`) and a
/// migration that sleeps `www/delay` seconds.
fn with_database(app: &str) -> Value {
    json!({
        "services": {"postgres": {"database": app.replace('-', "_")}},
        "migrations": {"command": "busybox sleep $(busybox cat /www/delay)"},
    })
}

#[tokio::test]
async fn cancel_during_the_snapshot_kills_pg_dump_and_keeps_the_previous_release() {
    let h = Harness::start().await;
    let (app, repo) = serving_v1(&h, "cancelsnap", with_database).await;
    let database = app.replace('-', "_");
    // v1's migration created the database. A transaction holding an
    // exclusive lock on one of its tables makes the next pg_dump wait.
    let app_db = norn_shared::db::with_database(&h.db_url, &database);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&app_db)
        .await
        .unwrap();
    // Made as the app's own role (the forge made it; pg_dump runs as it).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET ROLE {database}; CREATE TABLE held (x int); RESET ROLE"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let mut lock = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query("LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let sha = set_delay(&repo, 0, "v2");
    let id = h.deploy(&app, "HEAD").await;
    wait_step_running(&h, &id, "snapshot").await;
    eventually(
        Duration::from_secs(60),
        "pg_dump waiting for the lock",
        || async {
            let waiting: Option<(i32,)> = sqlx::query_as(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'pg_dump' AND wait_event_type = 'Lock'",
            )
            .bind(&database)
            .fetch_optional(&h.pool)
            .await
            .unwrap();
            waiting.filter(|_| pg_dump_running(&database))
        },
    )
    .await;
    cancel_and_expect_stopped_in(&h, &app, &id, "snapshot").await;
    // `kill_on_drop`: the dump process is gone although its lock never came.
    eventually(Duration::from_secs(10), "pg_dump killed", || async {
        (!pg_dump_running(&database)).then_some(())
    })
    .await;
    lock.rollback().await.unwrap();
    // No snapshot of v2 counts as taken: no complete dump carries its commit.
    let dumps: Vec<String> = std::fs::read_dir(&h.config.snapshots_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&sha[..12]) && n.ends_with(".dump"))
                .collect()
        })
        .unwrap_or_default();
    assert!(dumps.is_empty(), "{dumps:?}");
}

#[tokio::test]
async fn cancel_during_the_migration_kills_it_and_restores_the_snapshot() {
    let h = Harness::start().await;
    let (app, repo) = serving_v1(&h, "cancelmig", with_database).await;
    set_delay(&repo, 300, "v2");
    let id = h.deploy(&app, "HEAD").await;
    wait_step_running(&h, &id, "migrate").await;
    eventually(Duration::from_secs(60), "the migrate container", || async {
        let names = containers_of(&id).await;
        names.iter().any(|n| n.contains("-migrate-")).then_some(())
    })
    .await;
    let d = cancel_and_expect_stopped_in(&h, &app, &id, "migrate").await;
    // The snapshot step had dumped the database: a canceled migration counts
    // as a failed one, so the dump is restored.
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("database restored to its pre-migration snapshot"),
        "{error}"
    );
}

#[tokio::test]
async fn cancel_while_waiting_for_health_removes_the_new_release_before_the_switch() {
    let h = Harness::start().await;
    let (app, repo) = serving_v1(
        &h,
        "cancelhealthy",
        |_| json!({"deployPolicy": {"timeouts": {"healthy": "10m"}}}),
    )
    .await;
    let v1_instances = containers_named(&format!("{app}-web-")).await;
    assert_eq!(v1_instances.len(), 1, "{v1_instances:?}");
    // v2 never becomes healthy: its health path is gone (404).
    std::fs::remove_file(repo.dir.join("www/health")).unwrap();
    repo.commit("v2");
    let id = h.deploy(&app, "HEAD").await;
    wait_step_running(&h, &id, "healthy").await;
    assert_eq!(containers_of(&id).await.len(), 1);
    cancel_and_expect_stopped_in(&h, &app, &id, "healthy").await;
    // The old release is untouched and still the one routed.
    assert_eq!(containers_named(&format!("{app}-web-")).await, v1_instances);
    let (_, body) = h.get(&format!("/api/apps/{app}")).await;
    let routed: Vec<&str> = body["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["deploymentId"].as_str().unwrap())
        .collect();
    assert!(
        !routed.is_empty() && !routed.contains(&id.as_str()),
        "{body}"
    );
}

// ---------------------------------------------------------------------------
// Real processes: an api (with its ingress) and workers configured through
// the environment.

struct Fleet {
    api: ProcApi,
    ingress: std::net::SocketAddr,
    db: String,
    tmp: tempfile::TempDir,
    _api: Proc,
}

impl Fleet {
    async fn start() -> Self {
        let db = norn_shared::testing::fresh_database().await;
        let tmp = tempfile::tempdir().unwrap();
        let (port, ingress) = (free_port(), free_port());
        let api_proc = spawn_with(
            "norn-api",
            &db,
            tmp.path(),
            "api",
            port,
            &[("NORN_INGRESS_PORT", &ingress.to_string())],
        );
        let api = ProcApi::new(&format!("http://127.0.0.1:{port}")).await;
        Fleet {
            api,
            ingress: ([127, 0, 0, 1], ingress).into(),
            db,
            tmp,
            _api: api_proc,
        }
    }

    fn worker(&self, node: &str, env: &[(&str, &str)]) -> Proc {
        spawn_with("norn-worker", &self.db, self.tmp.path(), node, 0, env)
    }

    async fn register(&self, prefix: &str) -> (String, AppRepo) {
        let app = unique_app(prefix);
        let repo = AppRepo::create(self.tmp.path(), &app);
        let (code, body) = self
            .api
            .post("/api/apps", common::spec(&app, &repo, None))
            .await;
        assert_eq!(code, 201, "{body}");
        (app, repo)
    }

    async fn deploy(&self, app: &str) -> String {
        let (code, body) = self
            .api
            .post(&format!("/api/apps/{app}/deploy"), json!({}))
            .await;
        assert_eq!(code, 202, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    async fn actions(&self, id: &str) -> Vec<(String, String)> {
        let events = self.api.get(&format!("/api/deployments/{id}/events")).await;
        events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["actor"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

#[tokio::test]
async fn cancel_after_the_traffic_switch_lets_the_deploy_complete_and_records_the_request() {
    let fleet = Fleet::start().await;
    // A long drain after the switch is the window to cancel in.
    let _worker = fleet.worker("drainer", &[("NORN_DRAIN_GRACE", "10s")]);
    let (app, repo) = fleet.register("cancellate").await;
    let v1 = fleet.deploy(&app).await;
    let d = fleet.api.wait_terminal(&v1, Duration::from_secs(180)).await;
    assert_eq!(d["status"], "deployed", "{d}");
    let http = reqwest::Client::new();
    assert_eq!(app_get(&http, fleet.ingress, &app).await.unwrap(), "v1");

    repo.commit("v2");
    let v2 = fleet.deploy(&app).await;
    eventually(Duration::from_secs(120), "traffic on v2", || async {
        (app_get(&http, fleet.ingress, &app).await.ok()? == "v2").then_some(())
    })
    .await;
    let (code, body) = fleet
        .api
        .post(&format!("/api/deployments/{v2}/cancel"), json!({}))
        .await;
    // Accepted: the deploy was still running (draining v1) when asked.
    assert_eq!(code, 202, "{body}");
    let d = fleet.api.wait_terminal(&v2, Duration::from_secs(60)).await;
    assert_eq!(d["status"], "deployed", "{d}");
    assert_eq!(d["error"], Value::Null, "{d}");
    assert_eq!(d["cancelRequestedBy"], "api", "{d}");
    let actions: Vec<String> = fleet.actions(&v2).await.into_iter().map(|a| a.0).collect();
    let asked = actions.iter().position(|a| a == "deploy.cancel_requested");
    assert!(asked.is_some(), "{actions:?}");
    assert_eq!(actions.last().map(String::as_str), Some("deploy.complete"));
    assert!(!actions.iter().any(|a| a == "deploy.failed"), "{actions:?}");
    // v2 serves, v1 was retired as after any deploy.
    assert_eq!(app_get(&http, fleet.ingress, &app).await.unwrap(), "v2");
    assert!(containers_of(&v1).await.is_empty());
    assert_eq!(containers_of(&v2).await.len(), 1);
}

/// Deploys an app with a worker that stops right after the `deploy` step
/// (its instance is running), SIGKILLs that worker and starts a fresh one;
/// both with `NORN_DEPLOY_MAX_ATTEMPTS=max_attempts`. Returns the deployment
/// once it ended, and keeps the processes alive in `Fleet` and the worker.
async fn interrupted_once(max_attempts: &str) -> (Fleet, Proc, String, Value) {
    let fleet = Fleet::start().await;
    let env = [
        ("NORN_DEPLOY_MAX_ATTEMPTS", max_attempts),
        ("NORN_LEASE_TTL", "3s"),
    ];
    let mut paused = fleet.worker(
        "paused",
        &[env[0], env[1], ("NORN_TEST_PAUSE_AFTER_STEP", "deploy")],
    );
    let (app, _repo) = fleet.register("maxattempts").await;
    let id = fleet.deploy(&app).await;
    eventually(Duration::from_secs(120), "paused after deploy", || async {
        let d = fleet.api.deployment(&id).await;
        let steps = d["steps"].as_array()?.clone();
        steps
            .iter()
            .any(|s| s["step"] == "deploy" && s["status"] == "complete")
            .then_some(())
    })
    .await;
    assert_eq!(containers_of(&id).await.len(), 1, "the instance it started");
    paused.0.kill().unwrap();
    let status = paused.0.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let rescuer = fleet.worker("rescuer", &env);
    let d = fleet.api.wait_terminal(&id, Duration::from_secs(180)).await;
    (fleet, rescuer, id, d)
}

#[tokio::test]
async fn a_deploy_interrupted_more_often_than_max_attempts_allows_fails_as_restarted() {
    let (fleet, _rescuer, id, d) = interrupted_once("1").await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["error"], "norn restarted during deployment", "{d}");
    assert_eq!(d["attempts"], 2, "{d}");
    let actions = fleet.actions(&id).await;
    assert_eq!(
        actions.last(),
        Some(&("deploy.failed".to_owned(), "recovery".to_owned())),
        "{actions:?}"
    );
    assert!(
        !actions.iter().any(|a| a.0 == "deploy.resumed"),
        "{actions:?}"
    );
    // The killed attempt's instance is removed once the deploy has ended.
    eventually(
        Duration::from_secs(30),
        "the interrupted attempt's instance removed",
        || async { containers_of(&id).await.is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_deploy_interrupted_within_max_attempts_is_resumed_and_deployed() {
    let (fleet, _rescuer, id, d) = interrupted_once("2").await;
    assert_eq!(d["status"], "deployed", "{d}");
    assert_eq!(d["attempts"], 2, "{d}");
    let actions = fleet.actions(&id).await;
    let resumed: Vec<_> = actions.iter().filter(|a| a.0 == "deploy.resumed").collect();
    assert_eq!(resumed.len(), 1, "{actions:?}");
    assert_eq!(resumed[0].1, "recovery");
    // Only the resumed attempt's instance is left.
    let left = containers_of(&id).await;
    assert_eq!(left.len(), 1, "{left:?}");
    let app = d["app"].as_str().unwrap();
    let http = reqwest::Client::new();
    assert_eq!(app_get(&http, fleet.ingress, app).await.unwrap(), "v1");
}

/// A worker killed after switching traffic to v2 but before v2 was confirmed
/// (during the drain), with `max_attempts` for the worker that takes over.
/// Returns v2's deployment once it ended.
async fn killed_during_the_drain(max_attempts: &str) -> (Fleet, Proc, String, String, Value) {
    let fleet = Fleet::start().await;
    let env = [
        ("NORN_DEPLOY_MAX_ATTEMPTS", max_attempts),
        ("NORN_LEASE_TTL", "3s"),
    ];
    let (app, repo) = fleet.register("switchkill").await;
    // v1 with an ordinary worker: a long drain probes the release hundreds of
    // times, and v1 is not what this test is about.
    let setup = fleet.worker("setup", &env);
    let v1 = fleet.deploy(&app).await;
    let d = fleet.api.wait_terminal(&v1, Duration::from_secs(180)).await;
    assert_eq!(d["status"], "deployed", "{d}");
    drop(setup);
    let mut first = fleet.worker("drains", &[env[0], env[1], ("NORN_DRAIN_GRACE", "60s")]);
    repo.commit("v2");
    let v2 = fleet.deploy(&app).await;
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(120), "traffic on v2", || async {
        (app_get(&http, fleet.ingress, &app).await.ok()? == "v2").then_some(())
    })
    .await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let status = fleet.api.deployment(&v2).await;
    assert_eq!(
        status["status"], "deploying",
        "killed before v2 was confirmed: {status}"
    );
    let rescuer = fleet.worker("rescuer", &env);
    let d = fleet.api.wait_terminal(&v2, Duration::from_secs(180)).await;
    (fleet, rescuer, app, v1, d)
}

#[tokio::test]
async fn a_deploy_ended_after_an_unconfirmed_switch_puts_traffic_back_on_the_previous_release() {
    let (fleet, _rescuer, app, v1, d) = killed_during_the_drain("1").await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["error"], "norn restarted during deployment", "{d}");
    let v2 = d["id"].as_str().unwrap();
    // The route is back on v1 (not left on v2's removed containers), and v1 serves.
    let routes = fleet.api.get(&format!("/api/apps/{app}")).await["routes"].clone();
    let on: Vec<&str> = routes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["deploymentId"].as_str())
        .collect();
    assert_eq!(on, vec![v1.as_str()], "{routes}");
    // The ingress (another process) follows the routes by NOTIFY: shortly.
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(10),
        "the ingress serving v1",
        || async { (app_get(&http, fleet.ingress, &app).await.ok()? == "v1").then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "v2's instances removed",
        || async { containers_of(v2).await.is_empty().then_some(()) },
    )
    .await;
    assert_eq!(containers_of(&v1).await.len(), 1);
}

#[tokio::test]
async fn a_deploy_resumed_after_an_unconfirmed_switch_ends_deployed_with_one_release_serving() {
    let (fleet, _rescuer, app, v1, d) = killed_during_the_drain("2").await;
    assert_eq!(d["status"], "deployed", "{d}");
    let v2 = d["id"].as_str().unwrap();
    let http = reqwest::Client::new();
    assert_eq!(app_get(&http, fleet.ingress, &app).await.unwrap(), "v2");
    let routes = fleet.api.get(&format!("/api/apps/{app}")).await["routes"].clone();
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["deploymentId"] == v2),
        "{routes}"
    );
    assert!(containers_of(&v1).await.is_empty(), "v1 retired");
    assert_eq!(
        containers_of(v2).await.len(),
        1,
        "only the resumed attempt's instance"
    );
}
