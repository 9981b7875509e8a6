//! Crash-resume: a worker process SIGKILLed between any two steps of a deploy.
//! Seven workers each stop after a different step (the test hook
//! `NORN_TEST_PAUSE_AFTER_STEP`), all seven are killed, and one fresh worker
//! finishes every deploy from where it stopped. Real Postgres, Docker, git.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::procs::*;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOUNDARIES: [&str; 7] = [
    "clone", "build", "test", "snapshot", "migrate", "deploy", "healthy",
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

fn resumable_spec(app: &str, repo: &AppRepo, counter: u16) -> Value {
    json!({
        "name": app,
        "repo": {"url": repo.url()},
        "build": {"test": "busybox true"},
        "processes": {"web": {"port": 8080, "health": {"path": "/health", "timeout": "2s"}}},
        "services": {"postgres": {"database": app.replace('-', "_")}},
        "migrations": {"command": format!("busybox wget -q -O- http://127.0.0.1:{counter}/{app}")},
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
    drop(paused); // SIGKILL, all seven

    let _rescuer = spawn_with(
        "norn-worker",
        &db,
        tmp.path(),
        "rescuer",
        0,
        &[("NORN_WORKER_CONCURRENCY", "7"), ("NORN_LEASE_TTL", "3s")],
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
        assert_eq!(finished.len(), 8, "{app}: {finished:?}");
        let resumed: Vec<_> = rows
            .iter()
            .filter(|(a, _, _)| a == "deploy.resumed")
            .collect();
        assert_eq!(resumed.len(), 1, "{app}: {rows:?}");
        assert_eq!(resumed[0].2, "recovery");
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

/// A worker frozen (SIGSTOP) mid-step past its lease: another worker takes
/// the deploy over and finishes it; when the frozen one wakes up (SIGCONT) its
/// writes are fenced off and nothing of its attempt is left running.
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
    eventually(Duration::from_secs(60), "the test step", || async {
        (h.deployment(&id).await["status"] == "testing").then_some(())
    })
    .await;
    signal(&frozen, "-STOP");

    let _rescuer = spawn_with("norn-worker", &db, tmp.path(), "rescuer", 0, &env);
    let d = h.wait_terminal(&id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "deployed", "{d}");
    assert_eq!(d["attempts"], 2, "{d}");
    let events_before: i64 = count(&pool, &id).await;

    // The frozen worker wakes up in the middle of its test step.
    signal(&frozen, "-CONT");
    // It notices on its next write or lease renewal; its test container
    // (named with its lease token) goes away either way.
    eventually(
        Duration::from_secs(30),
        "the stale attempt's containers gone",
        || async {
            let left = all_containers()
                .await
                .into_iter()
                .filter(|c| {
                    c.labels.as_ref().and_then(|l| l.get("norn.app")) == Some(&app)
                        && c.labels.as_ref().and_then(|l| l.get("norn.job")).is_some()
                })
                .count();
            (left == 0).then_some(())
        },
    )
    .await;
    // Its handler has ended once its heartbeat reports no running job.
    let woke: (chrono::DateTime<chrono::Utc>,) = sqlx::query_as("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();
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
    assert_eq!(
        count(&pool, &id).await,
        events_before,
        "the stale worker wrote"
    );
    let d = h.deployment(&id).await;
    assert_eq!(d["status"], "deployed", "{d}");
    let instances = all_containers()
        .await
        .into_iter()
        .filter(|c| {
            c.labels.as_ref().and_then(|l| l.get("norn.app")) == Some(&app)
                && c.labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key("norn.process"))
        })
        .count();
    assert_eq!(instances, 1);
    remove_containers(&app).await;
}

async fn count(pool: &sqlx::PgPool, id: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM saga_events WHERE saga_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    n
}
