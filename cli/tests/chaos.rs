//! Chaos: 3 worker processes, deploys over 20 apps, a random worker SIGKILLed
//! (and replaced) every few seconds, Postgres restarted once. Every
//! deployment ends; no two operations ever overlap on one app; nothing is
//! lost. `NORN_CHAOS_DEPLOYS` sets the number of deploys (default 200).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::procs::*;
use common::*;
use serde_json::{Value, json};

const APPS: usize = 20;

type At = chrono::DateTime<chrono::Utc>;
const WORKERS: usize = 3;

fn worker(db: &str, tmp: &std::path::Path, n: usize) -> Proc {
    spawn_with(
        "norn-worker",
        db,
        tmp,
        &format!("chaos-worker-{n}"),
        0,
        &[("NORN_LEASE_TTL", "3s"), ("NORN_WORKER_CONCURRENCY", "4")],
    )
}

/// A small deterministic generator: the test needs variety, not secrecy.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

#[tokio::test]
async fn deploys_survive_killed_workers_and_a_postgres_restart() {
    let total: usize = std::env::var("NORN_CHAOS_DEPLOYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let (db, data) = private_cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _api = spawn("norn-api", &db, tmp.path(), "chaos-api", port);
    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_api(&http, &api).await;
    let mut workers: Vec<Proc> = (0..WORKERS).map(|n| worker(&db, tmp.path(), n)).collect();
    let mut spawned = WORKERS;

    let prefix = unique_app("chaos");
    let repo = AppRepo::create(tmp.path(), &prefix);
    let apps: Vec<String> = (0..APPS).map(|i| format!("{prefix}-{i}")).collect();
    for (i, app) in apps.iter().enumerate() {
        let mut spec = spec(app, &repo, None);
        // Half the apps run every deploy in order, half keep only the newest.
        if i % 2 == 0 {
            spec["deployPolicy"] = json!({"queue": "fifo"});
        }
        let resp = http
            .post(format!("{api}/api/apps"))
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }

    let mut rng = Lcg(0x5eed);
    let mut ids = Vec::new();
    let mut kills = 0;
    let mut pg_restarted = false;
    let started = Instant::now();
    let mut next_kill = Instant::now() + Duration::from_secs(3);
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    loop {
        // Deploys arrive over the first ~40 s, five at a time.
        if ids.len() < total {
            for _ in 0..5.min(total - ids.len()) {
                let app = &apps[rng.below(APPS)];
                if let Ok(resp) = http
                    .post(format!("{api}/api/apps/{app}/deploy"))
                    .json(&json!({}))
                    .send()
                    .await
                    && resp.status().as_u16() == 202
                    && let Ok(body) = resp.json::<Value>().await
                {
                    ids.push(body["id"].as_str().unwrap().to_owned());
                }
            }
        }
        if Instant::now() >= next_kill {
            let victim = rng.below(WORKERS);
            workers[victim] = worker(&db, tmp.path(), spawned); // the old one is SIGKILLed on drop
            spawned += 1;
            kills += 1;
            next_kill = Instant::now() + Duration::from_secs(3 + rng.below(3) as u64);
        }
        if !pg_restarted && started.elapsed() > Duration::from_secs(20) {
            pg_ctl(&data, &["-m", "fast", "-w", "restart"]);
            pg_restarted = true;
        }
        if ids.len() >= total {
            let open: Result<(i64,), _> = sqlx::query_as(
                "SELECT count(*) FROM deployments WHERE status NOT IN ('deployed', 'failed', 'rolled_back')",
            )
            .fetch_one(&pool)
            .await;
            if let Ok((0,)) = open {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "deployments still open after 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(pg_restarted, "the run ended before Postgres was restarted");
    assert_eq!(ids.len(), total, "every deploy request was accepted");

    // Every deployment ended, none is missing.
    let rows: Vec<(String, String, String, Option<String>, i32)> =
        sqlx::query_as("SELECT id, app, status, error, attempts FROM deployments")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), total);
    let mut outcome: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, status, error, _) in &rows {
        let key = match (status.as_str(), error.as_deref()) {
            ("failed", Some(e)) if e.starts_with("superseded by") => "superseded".to_owned(),
            ("failed", Some(e)) => format!("failed: {e}"),
            (s, _) => s.to_owned(),
        };
        *outcome.entry(key).or_default() += 1;
    }
    let resumed = rows.iter().filter(|r| r.4 > 1).count();
    println!(
        "chaos: {total} deploys over {APPS} apps, {kills} worker kills, 1 Postgres restart, {:.0} s; \
         outcomes {outcome:?}; {resumed} resumed after an interruption",
        started.elapsed().as_secs_f64()
    );
    let unexpected: Vec<_> = outcome
        .keys()
        .filter(|k| k.starts_with("failed:") && !k.contains("norn restarted during deployment"))
        .collect();
    assert!(unexpected.is_empty(), "unexpected failures: {outcome:?}");

    // Operations on one app never overlap: each saga runs from its first
    // start to its end, and those spans are disjoint per app.
    let events: Vec<(String, String, String, At)> = sqlx::query_as(
        "SELECT saga_id, app, action, created_at FROM saga_events WHERE category = 'deploy' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut spans: HashMap<&str, (String, Option<At>, Option<At>)> = HashMap::new();
    for (saga, app, action, at) in &events {
        let span = spans.entry(saga).or_insert((app.clone(), None, None));
        match action.as_str() {
            "deploy.start" | "deploy.resumed" if span.1.is_none() => span.1 = Some(*at),
            "deploy.complete" | "deploy.failed" => span.2 = Some(*at),
            _ => {}
        }
    }
    let mut per_app: HashMap<String, Vec<(At, At)>> = HashMap::new();
    for (app, start, end) in spans.into_values() {
        if let (Some(s), Some(e)) = (start, end) {
            per_app.entry(app).or_default().push((s, e));
        }
    }
    for (app, mut list) in per_app {
        list.sort();
        for pair in list.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "two operations overlapped on {app}: {pair:?}"
            );
        }
    }
    drop(workers);
    remove_containers(&prefix).await;
    pg_ctl(&data, &["-m", "immediate", "stop"]);
}
