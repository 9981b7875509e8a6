//! Cron apps end to end: real scheduler, worker, Postgres and Docker.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use serde_json::json;

async fn executions(h: &Harness, app: &str, status: &str) -> i64 {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM cron_executions WHERE app = $1 AND status = $2")
            .bind(app)
            .bind(status)
            .fetch_one(&h.pool)
            .await
            .unwrap();
    n
}

async fn newest_tick(h: &Harness, app: &str) -> Option<DateTime<Utc>> {
    let (t,): (Option<DateTime<Utc>>,) = sqlx::query_as(
        "SELECT max(scheduled_at) FROM cron_ticks WHERE app = $1 AND trigger <> 'manual'",
    )
    .bind(app)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cron_app_runs_pauses_resumes_overrides_and_triggers() {
    let h = Harness::start().await;
    h.spawn_scheduler();
    let app = unique_app("cron");
    let repo = AppRepo::create(h.tmp.path(), &app);
    let spec = cron_spec(
        &app,
        &repo,
        "* * * * * *",
        "echo tick from $NORN_TEST_VAR",
        json!({}),
    );
    let mut spec = spec;
    spec["env"] = json!({"NORN_TEST_VAR": "cron"});
    h.register_and_deploy(spec.clone()).await;

    // Every-second ticks run, each once, with the app's env.
    eventually(Duration::from_secs(60), "3 completed runs", || async {
        (executions(&h, &app, "completed").await >= 3).then_some(())
    })
    .await;
    let (status, body) = h.get(&format!("/api/apps/{app}/cron")).await;
    assert_eq!(status, 200, "{body}");
    let run = body["executions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["status"] == "completed")
        .unwrap()
        .clone();
    assert_eq!(run["exitCode"], 0);
    assert!(
        run["output"].as_str().unwrap().contains("tick from cron"),
        "{run}"
    );
    let (dupes,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT scheduled_at FROM cron_executions WHERE app = $1
         GROUP BY scheduled_at HAVING count(*) > 1) d",
    )
    .bind(&app)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(dupes, 0);

    // Pause: no tick is scheduled after it.
    let (status, body) = h
        .post(&format!("/api/apps/{app}/cron/pause"), json!({}))
        .await;
    assert_eq!(
        (status, body["paused"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let paused_at = Utc::now();
    // Absence can only be observed over time: three would-be ticks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let newest = newest_tick(&h, &app).await.unwrap();
    assert!(
        newest <= paused_at,
        "tick {newest} after pause at {paused_at}"
    );

    // A bad override is refused with the reason; a good one is kept.
    let (status, body) = h
        .put(
            &format!("/api/apps/{app}/cron/schedule"),
            json!({"schedule": "61 * * * *"}),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("schedule")),
        "{body}"
    );
    let (status, body) = h
        .put(
            &format!("/api/apps/{app}/cron/schedule"),
            json!({"schedule": "*/2 * * * * *"}),
        )
        .await;
    assert_eq!(
        (status, body["schedule"].as_str()),
        (200, Some("*/2 * * * * *")),
        "{body}"
    );

    // Pause and override survive a redeploy.
    repo.commit("v2");
    h.register_and_deploy(spec).await;
    let (_, body) = h.get(&format!("/api/apps/{app}/cron")).await;
    assert_eq!(body["state"]["paused"], true, "{body}");
    assert_eq!(body["state"]["schedule"], "*/2 * * * * *", "{body}");
    assert_eq!(body["state"]["specSchedule"], "* * * * * *", "{body}");

    // Resume: ticks again, on the override's even seconds only.
    let (status, _) = h
        .post(&format!("/api/apps/{app}/cron/resume"), json!({}))
        .await;
    assert_eq!(status, 200);
    let resumed_at = Utc::now();
    eventually(Duration::from_secs(30), "ticks after resume", || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM cron_ticks WHERE app = $1 AND scheduled_at > $2 AND trigger = 'schedule'",
        )
        .bind(&app)
        .bind(resumed_at)
        .fetch_one(&h.pool)
        .await
        .unwrap();
        (n >= 2).then_some(())
    })
    .await;
    let odd: Vec<(DateTime<Utc>,)> = sqlx::query_as(
        "SELECT scheduled_at FROM cron_ticks WHERE app = $1 AND scheduled_at > $2
         AND trigger = 'schedule' AND extract(second FROM scheduled_at)::int % 2 = 1",
    )
    .bind(&app)
    .bind(resumed_at)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert!(odd.is_empty(), "ticks off the override: {odd:?}");

    // Trigger: a manual run now, schedule untouched.
    let (status, body) = h
        .post(&format!("/api/apps/{app}/cron/trigger"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(Duration::from_secs(30), "the manual run", || async {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT status FROM cron_executions WHERE app = $1 AND trigger = 'manual'",
        )
        .bind(&app)
        .fetch_optional(&h.pool)
        .await
        .unwrap();
        row.filter(|(s,)| s == "completed").map(|_| ())
    })
    .await;

    // Unknown and non-cron apps.
    let (status, _) = h.get("/api/apps/nope/cron").await;
    assert_eq!(status, 404);
    remove_containers(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cron_timeout_and_overlap_policies() {
    let h = Harness::start().await;
    h.spawn_scheduler();
    let slow = unique_app("cron-timeout");
    let forbid = unique_app("cron-forbid");
    let replace = unique_app("cron-replace");
    let repo = AppRepo::create(h.tmp.path(), &slow);
    for spec in [
        cron_spec(
            &slow,
            &repo,
            "*/3 * * * * *",
            "echo started; busybox sleep 30",
            json!({"timeout": "1s", "overlap": "allow"}),
        ),
        cron_spec(
            &forbid,
            &repo,
            "* * * * * *",
            "busybox sleep 3",
            json!({"overlap": "forbid"}),
        ),
        cron_spec(
            &replace,
            &repo,
            "*/4 * * * * *",
            "busybox sleep 60",
            json!({"overlap": "replace"}),
        ),
    ] {
        h.register_and_deploy(spec).await;
    }

    // Timeout: killed at its deadline, recorded with its output so far.
    let (output, reason): (String, String) =
        eventually(Duration::from_secs(60), "a timed-out run", || async {
            sqlx::query_as(
            "SELECT output, reason FROM cron_executions WHERE app = $1 AND status = 'timed_out'",
        )
        .bind(&slow)
        .fetch_optional(&h.pool)
        .await
        .unwrap()
        })
        .await;
    assert!(output.contains("started"), "{output}");
    assert!(reason.contains("timed out after 1s"), "{reason}");
    let (_, body) = h.get(&format!("/api/apps/{slow}/cron")).await;
    assert!(
        body["executions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["status"] == "timed_out")
    );

    // Forbid: ticks during a run are skipped and recorded; runs never overlap.
    let reason: (String,) = eventually(Duration::from_secs(60), "a skipped tick", || async {
        sqlx::query_as("SELECT reason FROM cron_ticks WHERE app = $1 AND state = 'skipped' LIMIT 1")
            .bind(&forbid)
            .fetch_optional(&h.pool)
            .await
            .unwrap()
    })
    .await;
    assert!(reason.0.contains("still running"), "{}", reason.0);
    let (overlaps,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM cron_executions a JOIN cron_executions b
           ON a.app = b.app AND a.id < b.id
          AND b.started_at < COALESCE(a.finished_at, now())
        WHERE a.app = $1",
    )
    .bind(&forbid)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(overlaps, 0, "forbid let two runs overlap");
    let (_, body) = h.get(&format!("/api/apps/{forbid}/cron")).await;
    assert!(!body["skipped"].as_array().unwrap().is_empty(), "{body}");

    // Replace: the running execution is ended when the next tick starts.
    let reason: (String,) = eventually(Duration::from_secs(60), "a replaced run", || async {
        sqlx::query_as(
            "SELECT reason FROM cron_executions WHERE app = $1 AND status = 'failed' AND reason LIKE 'replaced%'",
        )
        .bind(&replace)
        .fetch_optional(&h.pool)
        .await
        .unwrap()
    })
    .await;
    assert!(reason.0.contains("overlap: replace"));
    for app in [&slow, &forbid, &replace] {
        let _ = h
            .post(&format!("/api/apps/{app}/cron/pause"), json!({}))
            .await;
        remove_containers(app).await;
    }
}
