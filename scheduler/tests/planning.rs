//! The scheduler's planning and pruning against a real Postgres (no Docker:
//! nothing here runs a container).

use chrono::Utc;
use norn_shared::db::{apps, cron, health};
use norn_shared::infraspec::InfraSpec;
use serde_json::json;
use sqlx::PgPool;

async fn cron_app(pool: &PgPool, name: &str, cron_policy: serde_json::Value) {
    let document = json!({
        "name": name,
        "processes": {"job": {"schedule": "* * * * *", "command": "true", "cron": cron_policy}},
    });
    let spec = InfraSpec::from_json(document.clone()).unwrap();
    let mut conn = pool.acquire().await.unwrap();
    apps::upsert(&mut conn, &spec, &document, "api", None)
        .await
        .unwrap();
    cron::sync_from_deploy(&mut conn, &spec, "img:1")
        .await
        .unwrap();
    // The scheduler was down for an hour.
    sqlx::query(
        "UPDATE cron_states SET last_scheduled_at = now() - interval '1 hour' WHERE app = $1",
    )
    .bind(name)
    .execute(&mut *conn)
    .await
    .unwrap();
}

async fn ticks(pool: &PgPool, app: &str) -> Vec<String> {
    sqlx::query_as::<_, (String,)>(
        "SELECT trigger FROM cron_ticks WHERE app = $1 ORDER BY scheduled_at",
    )
    .bind(app)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(t,)| t)
    .collect()
}

async fn jobs(pool: &PgPool) -> i64 {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM apalis.jobs WHERE job_type = 'norn.cron'")
            .fetch_one(pool)
            .await
            .unwrap();
    n
}

async fn missed_events(pool: &PgPool, app: &str) -> Vec<serde_json::Value> {
    sqlx::query_as::<_, (sqlx::types::Json<serde_json::Value>,)>(
        "SELECT metadata FROM saga_events WHERE app = $1 AND action = 'cron.missed'",
    )
    .bind(app)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(m,)| m.0)
    .collect()
}

#[tokio::test]
async fn coalesce_runs_once_for_an_outage_and_records_the_rest_as_missed() {
    let (pool, _) = norn_shared::testing::fresh_pool().await;
    cron_app(&pool, "nightly", json!({})).await;
    // Two planners at once (an old leader that has not noticed, a new one).
    let now = Utc::now();
    let (a, b) = tokio::join!(
        norn_scheduler::cron::plan_all(&pool, now),
        norn_scheduler::cron::plan_all(&pool, now)
    );
    a.unwrap();
    b.unwrap();
    let t = ticks(&pool, "nightly").await;
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(jobs(&pool).await, 1);
    let missed = missed_events(&pool, "nightly").await;
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert!(missed[0]["count"].as_u64().unwrap() >= 58, "{missed:?}");
    // Planning again changes nothing.
    norn_scheduler::cron::plan_all(&pool, Utc::now())
        .await
        .unwrap();
    assert!(ticks(&pool, "nightly").await.len() <= 2);
}

#[tokio::test]
async fn catch_up_runs_a_bounded_number_of_missed_ticks() {
    let (pool, _) = norn_shared::testing::fresh_pool().await;
    cron_app(
        &pool,
        "reports",
        json!({"missed": "catch_up", "catchUpLimit": 5}),
    )
    .await;
    norn_scheduler::cron::plan_all(&pool, Utc::now())
        .await
        .unwrap();
    let t = ticks(&pool, "reports").await;
    let late = t.iter().filter(|t| *t == "catch_up").count();
    assert_eq!(late, 5, "{t:?}");
    assert_eq!(jobs(&pool).await as usize, t.len());
    assert_eq!(missed_events(&pool, "reports").await.len(), 1);
}

#[tokio::test]
async fn paused_apps_are_not_planned() {
    let (pool, _) = norn_shared::testing::fresh_pool().await;
    cron_app(&pool, "quiet", json!({})).await;
    let mut conn = pool.acquire().await.unwrap();
    cron::set_paused(&mut conn, "quiet", true).await.unwrap();
    norn_scheduler::cron::plan_all(&pool, Utc::now())
        .await
        .unwrap();
    assert!(ticks(&pool, "quiet").await.is_empty());
    // Resuming starts from now: the paused hour is not replayed.
    cron::set_paused(&mut conn, "quiet", false).await.unwrap();
    norn_scheduler::cron::plan_all(&pool, Utc::now())
        .await
        .unwrap();
    assert!(ticks(&pool, "quiet").await.len() <= 1);
    assert!(missed_events(&pool, "quiet").await.is_empty());
}

#[tokio::test]
async fn health_pruning_removes_only_rows_older_than_a_day() {
    let (pool, _) = norn_shared::testing::fresh_pool().await;
    sqlx::query(
        "INSERT INTO health_checks (id, app, healthy, response_ms, checked_at)
         SELECT 'old-' || g, 'a', true, 1, now() - interval '25 hours' - g * interval '1 second'
         FROM generate_series(1, 12000) g
         UNION ALL
         SELECT 'new-' || g, 'a', true, 1, now() - interval '23 hours' - g * interval '1 second'
         FROM generate_series(1, 300) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let deleted = health::prune(&pool, 5000).await.unwrap();
    assert_eq!(deleted, 12000);
    let (left, old): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE id LIKE 'old-%') FROM health_checks",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((left, old), (300, 0));
}

#[tokio::test]
async fn an_interrupted_forge_fails_unless_a_live_process_holds_it() {
    let (pool, _) = norn_shared::testing::fresh_pool().await;
    for app in ["dead", "held", "fresh", "done"] {
        let status = if app == "done" { "forged" } else { "forging" };
        let started = if app == "fresh" {
            "now()"
        } else {
            "now() - interval '5 minutes'"
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO forge_states (app, status, started_at) VALUES ('{app}', '{status}', {started})"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    // A live process holds `held`'s lease: not touched.
    norn_shared::db::lease::try_acquire(
        &pool,
        "held",
        "w/forge",
        "forge",
        std::time::Duration::from_secs(30),
    )
    .await
    .unwrap()
    .unwrap();
    let failed = norn_scheduler::recovery::fail_interrupted_forges(&pool)
        .await
        .unwrap();
    assert_eq!(failed, ["dead"]);
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT app, status, error FROM forge_states ORDER BY app")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            (
                "dead".into(),
                "forge_failed".into(),
                Some("norn restarted during operation".into())
            ),
            ("done".into(), "forged".into(), None),
            ("fresh".into(), "forging".into(), None),
            ("held".into(), "forging".into(), None),
        ]
    );
    let (actor,): (String,) =
        sqlx::query_as("SELECT actor FROM saga_events WHERE saga_id = 'forge:dead'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(actor, "recovery");
}

#[tokio::test]
async fn an_abandoned_deployment_is_queued_again_once() {
    let (pool, _) = norn_shared::testing::fresh_pool().await;
    // `lost` was being built when its worker died and its job ran out of
    // retries; `held` is running on a live worker; `fresh` just started.
    for (id, app, age) in [
        ("00000000-0000-7000-8000-000000000001", "lost", "5 minutes"),
        ("00000000-0000-7000-8000-000000000002", "held", "5 minutes"),
        ("00000000-0000-7000-8000-000000000003", "fresh", "1 second"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO deployments (id, app, status, attempts, started_at)
             VALUES ('{id}', '{app}', 'building', 1, now() - interval '{age}')"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    norn_shared::db::lease::try_acquire(
        &pool,
        "held",
        "w/00000000-0000-7000-8000-000000000002",
        "deploy",
        std::time::Duration::from_secs(30),
    )
    .await
    .unwrap()
    .unwrap();
    let again = norn_scheduler::recovery::requeue_abandoned_deploys(&pool)
        .await
        .unwrap();
    assert_eq!(again, ["00000000-0000-7000-8000-000000000001"]);
    // Its new job is pending: the next sweep leaves it alone.
    let again = norn_scheduler::recovery::requeue_abandoned_deploys(&pool)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    let (jobs,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = 'norn.deploy' AND status = 'Pending'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(jobs, 1);
}

#[tokio::test]
async fn function_pruning_removes_only_runs_that_ended_before_the_retention() {
    let (pool, _) = norn_shared::testing::fresh_pool().await;
    // 2,500 runs ended 8 days ago, 10 ended a day ago, and 5 that were
    // queued or started 8 days ago and have not ended (a slot is theirs).
    sqlx::query(
        "INSERT INTO func_executions (app, process, status, queued_at, started_at, finished_at)
         SELECT 'f', 'fn', 'succeeded', now() - interval '8 days', now() - interval '8 days',
                now() - interval '8 days' + g * interval '1 ms'
         FROM generate_series(1, 2500) g
         UNION ALL
         SELECT 'f', 'fn', 'failed', now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
         FROM generate_series(1, 10) g
         UNION ALL
         SELECT 'f', 'fn', CASE WHEN g % 2 = 0 THEN 'queued' ELSE 'running' END,
                now() - interval '8 days', NULL, NULL
         FROM generate_series(1, 5) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let week = std::time::Duration::from_secs(7 * 24 * 3600);
    let deleted = norn_shared::db::functions::prune(&pool, week, 1000)
        .await
        .unwrap();
    assert_eq!(deleted, 2500);
    let (ended, open): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE finished_at IS NOT NULL),
                count(*) FILTER (WHERE finished_at IS NULL) FROM func_executions",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((ended, open), (10, 5));
}

#[tokio::test]
async fn webhook_pruning_keeps_a_month_of_deliveries_and_bounds_the_rejected_ones() {
    let (pool, _) = norn_shared::testing::fresh_pool().await;
    // Acted-on deliveries: 3 from 31 days ago, 4 from 20 days ago. Rejected
    // ones (anyone can send them): 2 from 8 days ago, and 1,200 today.
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, provider, delivery_id, event, app, status, actor, received_at)
         SELECT 'old-' || g, 'github', 'o' || g, 'push', 'a', 'ignored', 'webhook:github', now() - interval '31 days'
         FROM generate_series(1, 3) g
         UNION ALL
         SELECT 'kept-' || g, 'github', 'k' || g, 'push', 'a', 'deploying', 'webhook:github', now() - interval '20 days'
         FROM generate_series(1, 4) g
         UNION ALL
         SELECT 'stale-' || g, 'github', 's' || g, 'push', NULL, 'rejected', 'webhook:github', now() - interval '8 days'
         FROM generate_series(1, 2) g
         UNION ALL
         SELECT 'spam-' || g, 'gitlab', 'x' || g, 'Push Hook', NULL, 'rejected', 'webhook:gitlab',
                now() - g * interval '1 second'
         FROM generate_series(1, 1200) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let deleted = norn_shared::db::webhooks::prune(&pool).await.unwrap();
    assert_eq!(deleted, 3 + 2 + 200);
    let kept: Vec<(String, i64)> = sqlx::query_as(
        "SELECT split_part(id, '-', 1), count(*) FROM webhook_deliveries GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(kept, [("kept".to_owned(), 4), ("spam".to_owned(), 1000)]);
    // The newest rejected ones are the ones kept (spam-1 is the newest).
    let oldest_spam: i64 = sqlx::query_scalar(
        "SELECT max(split_part(id, '-', 2)::bigint) FROM webhook_deliveries WHERE id LIKE 'spam-%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(oldest_spam, 1000);
}

#[tokio::test]
async fn a_function_run_whose_job_died_is_ended_and_its_slot_goes_on() {
    use norn_shared::jobs::FunctionJob;
    use norn_shared::queue::{self, Queue};
    let (pool, _) = norn_shared::testing::fresh_pool().await;
    // a: its job failed on every attempt; b: its job is pending; c: its job
    // is gone (pruned); d: waits for a slot, not dispatched.
    let mut ids = Vec::new();
    for dispatched in [true, true, true, false] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO func_executions (app, process, status, dispatched, queued_at)
             VALUES ('f', 'fn', 'queued', $1, now() - interval '2 minutes') RETURNING id",
        )
        .bind(dispatched)
        .fetch_one(&pool)
        .await
        .unwrap();
        ids.push(id);
    }
    let mut conn = pool.acquire().await.unwrap();
    for id in &ids[..2] {
        let job = FunctionJob {
            execution_id: *id,
            app: "f".into(),
        };
        queue::enqueue(
            &mut conn,
            Queue::Function,
            &job,
            Some(&format!("func:{id}")),
        )
        .await
        .unwrap();
    }
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Failed', attempts = max_attempts
         WHERE idempotency_key = $1",
    )
    .bind(format!("func:{}", ids[0]))
    .execute(&pool)
    .await
    .unwrap();

    norn_scheduler::sweep::sweep(&pool).await.unwrap();

    let rows: Vec<(i64, String, Option<String>, bool)> =
        sqlx::query_as("SELECT id, status, reason, dispatched FROM func_executions ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let (a, b, c, d) = (&rows[0], &rows[1], &rows[2], &rows[3]);
    assert_eq!(a.1, "failed", "{rows:?}");
    assert!(
        a.2.as_deref().unwrap().contains("every attempt"),
        "{rows:?}"
    );
    assert_eq!(b.1, "queued", "a run whose job may still run is left alone");
    assert_eq!(c.1, "failed", "{rows:?}");
    assert_eq!(
        (d.1.as_str(), d.3),
        ("queued", true),
        "the freed slot went to d"
    );
}

#[tokio::test]
async fn change_run_pruning_keeps_each_apps_newest_status_and_drops_a_gone_apps_runs() {
    let (pool, _) = norn_shared::testing::fresh_pool().await;
    sqlx::query("INSERT INTO apps (id, spec, source) VALUES ('shop', '{}', 'api')")
        .execute(&pool)
        .await
        .unwrap();
    // shop: its newest status is 100 days old, with older runs around it and
    // one still queued; gone: an app no longer registered, with a fresh run.
    sqlx::query(
        "INSERT INTO change_runs (id, app, action, status, changes, requested_by, created_at, finished_at)
         VALUES
           ('old-1', 'shop', 'run', 'succeeded', '[]', 't', now() - interval '120 days', now() - interval '120 days'),
           ('old-2', 'shop', 'revert', 'failed', NULL, 't', now() - interval '95 days', now() - interval '95 days'),
           ('newest', 'shop', 'status', 'succeeded', '[]', 't', now() - interval '100 days', now() - interval '100 days'),
           ('recent', 'shop', 'dry_run', 'succeeded', NULL, 't', now() - interval '1 day', now() - interval '1 day'),
           ('gone-1', 'gone', 'run', 'succeeded', '[]', 't', now(), now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO change_runs (id, app, action, requested_by, created_at)
         VALUES ('waiting', 'shop', 'run', 't', now() - interval '200 days')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let deleted = norn_shared::db::change_runs::prune(&pool).await.unwrap();
    assert_eq!(deleted, 3);
    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM change_runs ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["newest", "recent", "waiting"]);
}
