//! Three real norn-scheduler processes; the leader is SIGKILLed every ~10 s
//! and restarted. Every scheduled second must run exactly once: each run
//! reports to a witness HTTP server on the host (cron containers, on the app
//! network, reach it at the network's gateway), so runs are counted where
//! they happen.
//! `NORN_CRON_FAILOVER_SECS` sets the length (default 180, the 3 minutes).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::procs::*;
use common::witness::{Witness, reported_run, run_id};
use common::*;
use serde_json::json;

/// The leading scheduler of this test's database: its node name and the
/// backend pid of its leader connection (a new leader has a new one).
async fn leader(pool: &sqlx::PgPool) -> Option<(String, i32)> {
    let row: Option<(String, i32)> = sqlx::query_as(
        "SELECT application_name, pid FROM pg_stat_activity
         WHERE datname = current_database() AND application_name LIKE 'norn-scheduler-leader:%'
         ORDER BY backend_start DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .unwrap();
    row.map(|(n, pid)| {
        (
            n.trim_start_matches("norn-scheduler-leader:").to_owned(),
            pid,
        )
    })
}

async fn backend_alive(pool: &sqlx::PgPool, pid: i32) -> bool {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap();
    n > 0
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_tick_runs_once_while_the_leader_is_killed() {
    let secs: u64 = std::env::var("NORN_CRON_FAILOVER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let h = Harness::start().await;
    let witness = Witness::start().await;
    let app = unique_app("failover");
    let repo = AppRepo::create(h.tmp.path(), &app);
    h.register_and_deploy(cron_spec(
        &app,
        &repo,
        "* * * * * *",
        &reported_run(&witness),
        // Under load a run can outlast a second; `forbid` would then skip a
        // tick on purpose. This test is about the scheduler, so every tick runs.
        json!({"overlap": "allow"}),
    ))
    .await;
    // Beside it, a cron app at the largest grace and timeout a spec may
    // give (an absurd one used to panic the leader in date arithmetic, and
    // every replica taking over met the same row): planning it on every
    // leader must not stop the other app's ticks.
    let patient = unique_app("patient");
    let patient_repo = AppRepo::create(h.tmp.path(), &patient);
    h.register_and_deploy(cron_spec(
        &patient,
        &patient_repo,
        "*/2 * * * * *",
        "true",
        json!({"grace": "24h", "timeout": "24h", "overlap": "allow"}),
    ))
    .await;

    let nodes = ["sched-a", "sched-b", "sched-c"];
    let mut procs: Vec<Proc> = nodes
        .iter()
        .map(|n| spawn("norn-scheduler", &h.db_url, h.tmp.path(), n, free_port()))
        .collect();
    eventually(Duration::from_secs(30), "a leader", || leader(&h.pool)).await;
    let start = Utc::now();
    let started = tokio::time::Instant::now();
    // One kill every 10 s: the leader of the moment (never one already
    // killed), whose leader session must end with its process.
    let planned = (secs / 10).max(1) as u32;
    let mut killed: Vec<(String, i32)> = Vec::new();
    for k in 1..=planned {
        tokio::time::sleep_until(started + Duration::from_secs(10) * k).await;
        let (node, pid) = eventually(Duration::from_secs(30), "a new leader", || async {
            leader(&h.pool)
                .await
                .filter(|(_, pid)| !killed.iter().any(|k| k.1 == *pid))
        })
        .await;
        let i = nodes.iter().position(|n| *n == node).unwrap();
        procs[i].0.kill().unwrap(); // SIGKILL
        procs[i].0.wait().unwrap();
        eventually(
            Duration::from_secs(10),
            "the killed leader's session to end",
            || async { (!backend_alive(&h.pool, pid).await).then_some(()) },
        )
        .await;
        // The killed node stays down until another has taken over: restarted
        // at once, it would often win the election itself (the others retry
        // every second) and no failover would be tested.
        eventually(Duration::from_secs(30), "another node to lead", || async {
            leader(&h.pool).await.filter(|(n, _)| *n != node)
        })
        .await;
        killed.push((node, pid));
        procs[i] = spawn(
            "norn-scheduler",
            &h.db_url,
            h.tmp.path(),
            nodes[i],
            free_port(),
        );
    }
    let end = Utc::now() - chrono::Duration::seconds(1);
    // Schedulers keep running until the window's last second is planned
    // (ticks are planned in order, so every earlier one is then planned too).
    eventually(
        Duration::from_secs(30),
        "the window's last tick",
        || async {
            let (newest,): (Option<DateTime<Utc>>,) =
                sqlx::query_as("SELECT max(scheduled_at) FROM cron_ticks WHERE app = $1")
                    .bind(&app)
                    .fetch_one(&h.pool)
                    .await
                    .unwrap();
            newest
                .filter(|t| t.timestamp() >= end.timestamp())
                .map(|_| ())
        },
    )
    .await;
    let (status, _) = h
        .post(&format!("/api/apps/{app}/cron/pause"), json!({}))
        .await;
    assert_eq!(status, 200);
    drop(procs);

    // Every planned kill ended a leader, and leadership moved between
    // processes (a leader is killed only after a new one took over).
    let distinct: HashSet<&str> = killed.iter().map(|(n, _)| n.as_str()).collect();
    println!("leaders killed: {killed:?}");
    assert_eq!(killed.len(), planned as usize, "{killed:?}");
    // A restarted process often wins the next election itself; over many
    // kills the others must lead too.
    assert!(
        distinct.len() >= 2 || planned < 10,
        "leadership never left one node: {killed:?}"
    );

    // Every tick that was planned has ended (the worker runs them).
    eventually(Duration::from_secs(90), "every tick ended", || async {
        let (busy,): (i64,) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM cron_ticks WHERE app = $1 AND state = 'queued')
                  + (SELECT count(*) FROM cron_executions WHERE app = $1 AND status = 'running')",
        )
        .bind(&app)
        .fetch_one(&h.pool)
        .await
        .unwrap();
        (busy == 0).then_some(())
    })
    .await;

    // Every tick: one execution, completed, whose run the witness saw once.
    type TickRow = (DateTime<Utc>, String, i64, Option<String>, Option<String>);
    let rows: Vec<TickRow> = sqlx::query_as(
        "SELECT t.scheduled_at, t.state, count(e.id), min(e.status), min(e.output)
         FROM cron_ticks t LEFT JOIN cron_executions e
           ON e.app = t.app AND e.process = t.process AND e.scheduled_at = t.scheduled_at
         WHERE t.app = $1
         GROUP BY t.scheduled_at, t.state ORDER BY t.scheduled_at",
    )
    .bind(&app)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    let runs = witness.counts("run");
    let mut recorded = HashSet::new();
    // Scheduled time → the run reached the witness, in ms.
    let mut ran: Vec<f64> = Vec::new();
    for (at, state, n, status, output) in &rows {
        assert_eq!(
            (state.as_str(), *n, status.as_deref()),
            ("started", 1, Some("completed")),
            "tick {at}: {output:?}"
        );
        let id = run_id(output.as_deref().unwrap_or_default())
            .unwrap_or_else(|| panic!("tick {at}: no run id in {output:?}"));
        assert_eq!(
            runs.get(&id).copied(),
            Some(1),
            "tick {at}: its run {id} reached the witness a wrong number of times"
        );
        let hit = witness.times(&format!("/run/{id}"))[0];
        assert!(hit >= *at, "tick {at} ran at {hit}, before its time");
        ran.push((hit - *at).num_milliseconds() as f64);
        recorded.insert(id);
    }
    let unrecorded: Vec<&String> = runs.keys().filter(|id| !recorded.contains(*id)).collect();
    assert!(
        unrecorded.is_empty(),
        "runs no execution accounts for: {unrecorded:?}"
    );
    let (completed,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM cron_executions WHERE app = $1 AND status = 'completed'",
    )
    .bind(&app)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        runs.values().sum::<usize>() as i64,
        completed,
        "runs seen by the witness vs completed executions"
    );

    // No second of the window is missing: one tick (so one run) for each.
    let window: Vec<i64> = rows
        .iter()
        .map(|r| r.0)
        .filter(|t| *t > start && *t <= end)
        .map(|t| t.timestamp())
        .collect();
    let missing: Vec<i64> = (start.timestamp() + 1..=end.timestamp())
        .filter(|s| !window.contains(s))
        .collect();
    assert!(missing.is_empty(), "seconds that never ran: {missing:?}");
    assert_eq!(
        window.len() as i64,
        end.timestamp() - start.timestamp(),
        "{window:?}"
    );

    // Lateness: tick → enqueued, tick → container started.
    let lat: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT extract(epoch FROM t.enqueued_at - t.scheduled_at)::float8,
                extract(epoch FROM e.container_started_at - t.scheduled_at)::float8
         FROM cron_ticks t JOIN cron_executions e ON e.app = t.app AND e.scheduled_at = t.scheduled_at
         WHERE t.app = $1 AND t.scheduled_at > $2 AND t.scheduled_at <= $3",
    )
    .bind(&app)
    .bind(start)
    .bind(end)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    let mut enq: Vec<f64> = lat.iter().map(|l| l.0 * 1000.0).collect();
    let mut run: Vec<f64> = lat.iter().map(|l| l.1 * 1000.0).collect();
    enq.sort_by(f64::total_cmp);
    run.sort_by(f64::total_cmp);
    ran.sort_by(f64::total_cmp);
    println!(
        "cron failover: {} ticks, {} leader kills; tick→enqueued p50 {:.0} ms p99 {:.0} ms max {:.0} ms; \
         tick→container started p50 {:.0} ms p99 {:.0} ms; tick→run seen p50 {:.0} ms p99 {:.0} ms",
        lat.len(),
        killed.len(),
        pct(&enq, 0.5),
        pct(&enq, 0.99),
        enq[enq.len() - 1],
        pct(&run, 0.5),
        pct(&run, 0.99),
        pct(&ran, 0.5),
        pct(&ran, 0.99)
    );
    // The failover bound: a standby leads within 5 s of the leader's death.
    assert!(
        enq[enq.len() - 1] < 5000.0,
        "a tick waited {} ms for a leader",
        enq[enq.len() - 1]
    );
    remove_containers(&app).await;
}
