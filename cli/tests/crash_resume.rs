//! Crash-resume: a worker process SIGKILLed between any two steps of a deploy.
//! Seven workers each stop after a different step (the test hook
//! `NORN_TEST_PAUSE_AFTER_STEP`), all eight are killed, and one fresh worker
//! finishes every deploy from where it stopped. Real Postgres, Docker, git.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::procs::*;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOUNDARIES: [&str; 8] = [
    "forge", "clone", "build", "test", "snapshot", "migrate", "deploy", "healthy",
];

/// Counts HTTP requests per path: each app's migration command calls it once
/// per run, so a migration applied twice shows as 2.
async fn migration_counter() -> (u16, Arc<Mutex<HashMap<String, u32>>>) {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(Mutex::new(HashMap::new()));
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
                    *seen.lock().unwrap().entry(path.to_owned()).or_insert(0) += 1;
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

/// Each app's test command and migration command call the counter once per
/// run, at `/test/<app>` and `/<app>`.
fn resumable_spec(app: &str, repo: &AppRepo, counter: u16) -> Value {
    let host = common::host_from_containers();
    json!({
        "name": app,
        "repo": {"url": repo.url()},
        "build": {"test": format!("busybox wget -q -O- http://{host}:{counter}/test/{app}")},
        "processes": {"web": {"port": 8080, "health": {"path": "/health", "timeout": "2s"}}},
        "services": {"postgres": {"database": app.replace('-', "_")}},
        "migrations": {"command": format!("busybox wget -q -O- http://{host}:{counter}/{app}")},
    })
}

/// The last step each deployment finished, from its step log.
async fn last_finished(pool: &sqlx::PgPool, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        let (steps,): (Value,) = sqlx::query_as("SELECT steps FROM deployments WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
        let last = steps
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|s| matches!(s["status"].as_str(), Some("complete" | "skipped")))
            .and_then(|s| s["step"].as_str())
            .unwrap_or("")
            .to_owned();
        out.push(last);
    }
    out
}

#[tokio::test]
async fn a_worker_killed_at_any_step_boundary_is_resumed_there() {
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let (counter, hits) = migration_counter().await;
    let port = free_port();
    let _api = spawn("norn-api", &db, tmp.path(), "api", port);
    let api = format!("http://127.0.0.1:{port}");
    let h = ProcApi::new(&api).await;

    let prefix = unique_app("resume");
    let repo = AppRepo::create(tmp.path(), &prefix);
    let apps: Vec<String> = (0..BOUNDARIES.len())
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    for app in &apps {
        let (status, body) = h
            .post("/api/apps", resumable_spec(app, &repo, counter))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // One worker per boundary, each taking one deploy and stopping after its step.
    let paused: Vec<Proc> = BOUNDARIES
        .iter()
        .map(|step| {
            spawn_with(
                "norn-worker",
                &db,
                tmp.path(),
                &format!("paused-{step}"),
                0,
                &[
                    ("NORN_TEST_PAUSE_AFTER_STEP", step),
                    ("NORN_WORKER_CONCURRENCY", "1"),
                    ("NORN_LEASE_TTL", "3s"),
                ],
            )
        })
        .collect();
    let mut ids = Vec::new();
    for app in &apps {
        let (status, body) = h.post(&format!("/api/apps/{app}/deploy"), json!({})).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let stopped_at = eventually(
        Duration::from_secs(240),
        "every worker stopped at its boundary",
        || async {
            let mut last = last_finished(&pool, &ids).await;
            let mut sorted = last.clone();
            sorted.sort();
            let mut want: Vec<String> = BOUNDARIES.iter().map(|s| s.to_string()).collect();
            want.sort();
            (sorted == want).then(|| std::mem::take(&mut last))
        },
    )
    .await;
    drop(paused); // SIGKILL, all eight

    let _rescuer = spawn_with(
        "norn-worker",
        &db,
        tmp.path(),
        "rescuer",
        0,
        &[("NORN_WORKER_CONCURRENCY", "8"), ("NORN_LEASE_TTL", "3s")],
    );
    for id in &ids {
        let d = h.wait_terminal(id, Duration::from_secs(240)).await;
        assert_eq!(d["status"], "deployed", "{d}");
        assert_eq!(d["attempts"], 2, "{d}");
    }

    for ((app, id), stopped) in apps.iter().zip(&ids).zip(&stopped_at) {
        let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
            "SELECT action, step, actor FROM saga_events WHERE saga_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut finished: BTreeMap<String, u32> = BTreeMap::new();
        for (action, step, _) in &rows {
            if action == "step.complete" || action == "step.skipped" {
                *finished.entry(step.clone().unwrap()).or_default() += 1;
            }
        }
        for (step, n) in &finished {
            // Instances belong to the attempt that started them: stopped
            // after `deploy`, the resume starts them again.
            let expected = if step == "deploy" && stopped == "deploy" {
                2
            } else {
                1
            };
            assert_eq!(
                *n, expected,
                "{app} (stopped after {stopped}): {step} finished {n}×"
            );
        }
        assert_eq!(finished.len(), 9, "{app}: {finished:?}");
        let resumed: Vec<_> = rows
            .iter()
            .filter(|(a, _, _)| a == "deploy.resumed")
            .collect();
        assert_eq!(resumed.len(), 1, "{app}: {rows:?}");
        assert_eq!(resumed[0].2, "recovery");
        // Resumed there: at the step after the one it stopped after (deploy
        // again when it stopped before the switch).
        let at = BOUNDARIES.iter().position(|b| b == stopped).unwrap();
        let want = if stopped == "deploy" {
            "deploy"
        } else {
            BOUNDARIES.get(at + 1).copied().unwrap_or("cleanup")
        };
        assert_eq!(
            resumed[0].1.as_deref(),
            Some(want),
            "{app} (stopped after {stopped}) resumed at the wrong step"
        );
        let completes = rows
            .iter()
            .filter(|(a, _, _)| a == "deploy.complete")
            .count();
        assert_eq!(completes, 1, "{app}: deployed {completes}×");
        assert_eq!(
            hits.lock().unwrap().get(&format!("/{app}")).copied(),
            Some(1),
            "{app} (stopped after {stopped}): migration ran a wrong number of times"
        );
        assert_eq!(
            hits.lock().unwrap().get(&format!("/test/{app}")).copied(),
            Some(1),
            "{app} (stopped after {stopped}): test step ran a wrong number of times"
        );
    }

    // Exactly one instance per app and no leftover one-off containers.
    let mut per_app: HashMap<String, u32> = HashMap::new();
    for c in all_containers().await {
        if let Some(app) = c.labels.as_ref().and_then(|l| l.get("norn.app"))
            && app.starts_with(&prefix)
        {
            *per_app.entry(app.clone()).or_default() += 1;
        }
    }
    for app in &apps {
        assert_eq!(per_app.get(app), Some(&1), "{app}: {per_app:?}");
    }
    remove_containers(&prefix).await;
}

fn signal(proc: &Proc, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &proc.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Everything Norn records about `app`: its deployments (steps, status,
/// attempts, image, lease token, timestamps: every column), routes, lease,
/// saga events and cron state, as one JSON value.
async fn app_state(pool: &sqlx::PgPool, app: &str) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_object(
            'deployments', (SELECT jsonb_agg(to_jsonb(d) ORDER BY d.id) FROM deployments d WHERE d.app = $1),
            'routes', (SELECT jsonb_agg(to_jsonb(r) ORDER BY r.process) FROM app_routes r WHERE r.app = $1),
            'lease', (SELECT jsonb_agg(to_jsonb(l)) FROM app_leases l WHERE l.app = $1),
            'saga', (SELECT jsonb_agg(to_jsonb(s) ORDER BY s.id) FROM saga_events s WHERE s.app = $1),
            'cron', (SELECT jsonb_agg(to_jsonb(c)) FROM cron_states c WHERE c.app = $1))",
    )
    .bind(app)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Containers of `app` (`all = true`): (name, `norn.attempt` label, running).
async fn app_containers(app: &str) -> Vec<(String, Option<String>, bool)> {
    let mut list: Vec<_> = all_containers()
        .await
        .into_iter()
        .filter(|c| c.labels.as_ref().and_then(|l| l.get("norn.app")) == Some(&app.to_owned()))
        .map(|c| {
            (
                c.names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                c.labels
                    .as_ref()
                    .and_then(|l| l.get("norn.attempt").cloned()),
                c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            )
        })
        .collect();
    list.sort();
    list
}

/// Docker's container events for `app` between `since` and now (Unix time).
async fn container_events(app: &str, since: f64) -> Vec<(String, String)> {
    use futures::StreamExt;
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 1.0;
    let filters = HashMap::from([
        ("type", vec!["container".to_owned()]),
        ("label", vec![format!("norn.app={app}")]),
    ]);
    let options = bollard::query_parameters::EventsOptionsBuilder::default()
        .since(&format!("{since:.6}"))
        .until(&format!("{until:.6}"))
        .filters(&filters)
        .build();
    docker
        .events(Some(options))
        .map(|e| {
            let e = e.unwrap();
            let name = e
                .actor
                .and_then(|a| a.attributes)
                .and_then(|a| a.get("name").cloned())
                .unwrap_or_default();
            (e.action.unwrap_or_default(), name)
        })
        .collect()
        .await
}

/// A worker frozen (SIGSTOP) mid-step past its lease: another worker takes
/// the deploy over and finishes it; when the frozen one wakes up (SIGCONT) it
/// writes nothing (no row, route, lease, saga or live event changes), starts
/// no container, and nothing of its attempt is left.
#[tokio::test]
async fn a_worker_that_wakes_up_after_losing_its_lease_writes_nothing() {
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let port = free_port();
    let _api = spawn("norn-api", &db, tmp.path(), "api", port);
    let h = ProcApi::new(&format!("http://127.0.0.1:{port}")).await;
    let app = unique_app("fenced");
    let repo = AppRepo::create(tmp.path(), &app);
    let (status, body) = h
        .post("/api/apps", spec(&app, &repo, Some("busybox sleep 6")))
        .await;
    assert_eq!(status, 201, "{body}");
    let env = [("NORN_LEASE_TTL", "3s")];
    let frozen = spawn_with("norn-worker", &db, tmp.path(), "frozen", 0, &env);
    let (_, body) = h.post(&format!("/api/apps/{app}/deploy"), json!({})).await;
    let id = body["id"].as_str().unwrap().to_owned();
    let short = &id[id.len() - 12..];
    // Frozen mid-step: its test container (named with its lease token) runs.
    let frozen_token = eventually(Duration::from_secs(60), "the test step", || async {
        let d = h.deployment(&id).await;
        if d["status"] != "testing" {
            return None;
        }
        let (token,): (Option<i64>,) =
            sqlx::query_as("SELECT lease_token FROM deployments WHERE id = $1")
                .bind(&id)
                .fetch_one(&pool)
                .await
                .unwrap();
        let tag = format!("{short}-{}", token?);
        app_containers(&app)
            .await
            .iter()
            .any(|(name, _, running)| *running && name.contains(&tag))
            .then_some(token?)
    })
    .await;
    let frozen_tag = format!("{short}-{frozen_token}");
    signal(&frozen, "-STOP");

    let _rescuer = spawn_with("norn-worker", &db, tmp.path(), "rescuer", 0, &env);
    let d = h.wait_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "deployed", "{d}");
    assert_eq!(d["attempts"], 2, "{d}");
    // The rescuer releases the lease just after the row ends.
    eventually(Duration::from_secs(10), "the lease released", || async {
        let held: Option<(String,)> =
            sqlx::query_as("SELECT holder FROM app_leases WHERE app = $1")
                .bind(&app)
                .fetch_optional(&pool)
                .await
                .unwrap();
        held.is_none().then_some(())
    })
    .await;
    let before = app_state(&pool, &app).await;
    let rescuer_token = before["deployments"][0]["lease_token"].as_i64().unwrap();
    assert_ne!(rescuer_token, frozen_token);
    let containers_before = app_containers(&app).await;

    // Live events and route changes are watched from before the wake-up.
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener
        .listen_all(["norn_events", "norn_routes"])
        .await
        .unwrap();
    let woke_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let woke: (chrono::DateTime<chrono::Utc>,) = sqlx::query_as("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();

    // The frozen worker wakes up in the middle of its test step.
    signal(&frozen, "-CONT");
    // It notices on its next write or lease renewal; its test container goes
    // away either way, stopped ones included.
    eventually(
        Duration::from_secs(30),
        "the stale attempt's containers gone",
        || async {
            let left = app_containers(&app).await;
            left.iter()
                .all(|(name, _, _)| !name.contains(&frozen_tag))
                .then_some(())
        },
    )
    .await;
    // Its handler has ended once its heartbeat reports no running job.
    eventually(Duration::from_secs(30), "the stale handler to end", || async {
        let row: Option<(i32,)> = sqlx::query_as(
            "SELECT running_jobs FROM cluster_nodes WHERE name = 'frozen' AND last_heartbeat_at > $1",
        )
        .bind(woke.0)
        .fetch_optional(&pool)
        .await
        .unwrap();
        (row == Some((0,))).then_some(())
    })
    .await;

    // Nothing Norn records about the app changed: not the deployment row
    // (steps, status, attempts, image tag, lease token, finished_at), not the
    // routes, the lease or the saga.
    let after = app_state(&pool, &app).await;
    for part in ["deployments", "routes", "lease", "saga", "cron"] {
        assert_eq!(after[part], before[part], "the stale worker changed {part}");
    }
    // No live event and no route change was published for the app.
    let mut published = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await {
        if n.payload().contains(&app) {
            published.push(format!("{}: {}", n.channel(), n.payload()));
        }
    }
    assert!(
        published.is_empty(),
        "the stale worker published {published:?}"
    );

    // It started nothing after waking, and what is left is exactly what was
    // there before minus its own containers: the rescuer's one instance.
    let events = container_events(&app, woke_at).await;
    // The witness sees the wake-up: the stale test container's removal.
    assert!(
        events
            .iter()
            .any(|(action, name)| action == "destroy" && name.contains(&frozen_tag)),
        "no removal of {frozen_tag} seen: {events:?}"
    );
    let started: Vec<_> = events
        .iter()
        .filter(|(action, _)| action == "create" || action == "start")
        .collect();
    assert!(
        started.is_empty(),
        "containers started after the wake-up: {events:?}"
    );
    let left = app_containers(&app).await;
    let expected: Vec<_> = containers_before
        .into_iter()
        .filter(|(name, _, _)| !name.contains(&frozen_tag))
        .collect();
    assert_eq!(left, expected);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].1, Some(rescuer_token.to_string()), "{left:?}");
    assert!(left[0].2, "the rescuer's instance is not running: {left:?}");
    remove_containers(&app).await;
}
