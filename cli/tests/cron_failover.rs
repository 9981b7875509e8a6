//! Three real norn-scheduler processes; the leader is SIGKILLed every ~10 s
//! and restarted. Every scheduled second must run exactly once.
//! `NORN_CRON_FAILOVER_SECS` sets the length (default 180, the 3 minutes).

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::procs::*;
use common::*;
use serde_json::json;

async fn leader(pool: &sqlx::PgPool) -> Option<String> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT application_name FROM pg_stat_activity
         WHERE application_name LIKE 'norn-scheduler-leader:%' LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .unwrap();
    row.map(|(n,)| n.trim_start_matches("norn-scheduler-leader:").to_owned())
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
    let app = unique_app("failover");
    let repo = AppRepo::create(h.tmp.path(), &app);
    h.register_and_deploy(cron_spec(
        &app,
        &repo,
        "* * * * * *",
        "echo t",
        // Under load a run can outlast a second; `forbid` would then skip a
        // tick on purpose. This test is about the scheduler, so every tick runs.
        json!({"overlap": "allow"}),
    ))
    .await;

    let nodes = ["sched-a", "sched-b", "sched-c"];
    let mut procs: Vec<Proc> = nodes
        .iter()
        .map(|n| spawn("norn-scheduler", &h.db_url, h.tmp.path(), n, free_port()))
        .collect();
    eventually(Duration::from_secs(30), "a leader", || leader(&h.pool)).await;
    let start = Utc::now();
    let mut kills = 0;
    while Utc::now() < start + chrono::Duration::seconds(secs as i64) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let Some(node) = leader(&h.pool).await else {
            continue;
        };
        let i = nodes.iter().position(|n| *n == node).unwrap();
        let _ = procs[i].0.kill(); // SIGKILL
        let _ = procs[i].0.wait();
        kills += 1;
        procs[i] = spawn(
            "norn-scheduler",
            &h.db_url,
            h.tmp.path(),
            nodes[i],
            free_port(),
        );
    }
    let end = Utc::now() - chrono::Duration::seconds(1);
    drop(procs);

    // Every second of the window: exactly one execution, and it completed.
    let rows: Vec<(DateTime<Utc>, i64, i64)> =
        eventually(Duration::from_secs(90), "all ticks executed", || async {
            let rows: Vec<(DateTime<Utc>, i64, i64)> = sqlx::query_as(
            "SELECT t.scheduled_at, count(e.id), count(e.id) FILTER (WHERE e.status = 'completed')
             FROM cron_ticks t LEFT JOIN cron_executions e
               ON e.app = t.app AND e.scheduled_at = t.scheduled_at
             WHERE t.app = $1 AND t.scheduled_at > $2 AND t.scheduled_at <= $3
             GROUP BY t.scheduled_at ORDER BY t.scheduled_at",
        )
        .bind(&app)
        .bind(start)
        .bind(end)
        .fetch_all(&h.pool)
        .await
        .unwrap();
            rows.iter().all(|(_, _, done)| *done == 1).then_some(rows)
        })
        .await;
    let expected = (end.timestamp() - start.timestamp()) as usize;
    assert!(
        rows.len() + 1 >= expected,
        "{} ticks for {expected} seconds",
        rows.len()
    );
    assert!(rows.iter().all(|(_, n, _)| *n == 1), "a tick ran twice");
    let mut seconds: Vec<i64> = rows.iter().map(|(t, _, _)| t.timestamp()).collect();
    seconds.dedup();
    let gaps = seconds.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1);
    assert_eq!(gaps, 1, "a scheduled second was skipped");

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
    println!(
        "cron failover: {} ticks, {kills} leader kills; tick→enqueued p50 {:.0} ms p99 {:.0} ms max {:.0} ms; \
         tick→container started p50 {:.0} ms p99 {:.0} ms",
        lat.len(),
        pct(&enq, 0.5),
        pct(&enq, 0.99),
        enq[enq.len() - 1],
        pct(&run, 0.5),
        pct(&run, 0.99)
    );
    // The failover bound: a standby leads within 5 s of the leader's death.
    assert!(
        enq[enq.len() - 1] < 5000.0,
        "a tick waited {} ms for a leader",
        enq[enq.len() - 1]
    );
    let _ = h
        .post(&format!("/api/apps/{app}/cron/pause"), json!({}))
        .await;
    remove_containers(&app).await;
}
