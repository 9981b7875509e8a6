//! Cron apps end to end: real scheduler, worker, Postgres and Docker. The
//! cron commands report to a [`Witness`] over HTTP (cron containers run on
//! the hardened app network and reach it at the network's gateway), so runs
//! are counted where they happen, not in Norn's own tables.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::witness::{Witness, reported_run, run_id};
use common::*;
use serde_json::json;

/// The tests of this file run one at a time: each starts a container every
/// second or two, and app containers join the app network (a start costs
/// the engine more than on the host network did); three at once starve a
/// two-core engine and blur the timing these tests assert.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// Waits until `app` has no tick waiting to start and no execution running.
async fn settled(h: &Harness, app: &str) {
    eventually(Duration::from_secs(60), "every tick ended", || async {
        let (busy,): (i64,) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM cron_ticks WHERE app = $1 AND state = 'queued')
                  + (SELECT count(*) FROM cron_executions WHERE app = $1 AND status = 'running')",
        )
        .bind(app)
        .fetch_one(&h.pool)
        .await
        .unwrap();
        (busy == 0).then_some(())
    })
    .await;
}

/// A tick (scheduled_at, trigger, state) and its executions (how many, the
/// status and output of one).
type TickRow = (
    DateTime<Utc>,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
);

/// Every tick of a settled `app` ran exactly once: one execution, completed,
/// whose run the witness saw exactly once; and the witness saw no run that
/// no execution accounts for. Returns the ticks (scheduled_at, trigger).
async fn each_tick_ran_once(
    h: &Harness,
    app: &str,
    witness: &Witness,
) -> Vec<(DateTime<Utc>, String)> {
    let rows: Vec<TickRow> = sqlx::query_as(
        "SELECT t.scheduled_at, t.trigger, t.state, count(e.id),
                    min(e.status), min(e.output)
             FROM cron_ticks t LEFT JOIN cron_executions e
               ON e.app = t.app AND e.process = t.process AND e.scheduled_at = t.scheduled_at
             WHERE t.app = $1
             GROUP BY t.scheduled_at, t.trigger, t.state ORDER BY t.scheduled_at",
    )
    .bind(app)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    let runs = witness.counts("run");
    let mut recorded = HashSet::new();
    for (at, trigger, state, n, status, output) in &rows {
        assert_eq!(
            (state.as_str(), *n, status.as_deref()),
            ("started", 1, Some("completed")),
            "tick {at} ({trigger}): {output:?}"
        );
        let id = run_id(output.as_deref().unwrap_or_default())
            .unwrap_or_else(|| panic!("tick {at}: no run id in {output:?}"));
        assert_eq!(
            runs.get(&id).copied(),
            Some(1),
            "tick {at} ({trigger}): its run {id} reached the witness a wrong number of times"
        );
        recorded.insert(id);
    }
    let unrecorded: Vec<&String> = runs.keys().filter(|id| !recorded.contains(*id)).collect();
    assert!(
        unrecorded.is_empty(),
        "runs no execution accounts for: {unrecorded:?}"
    );
    let hits: usize = runs.values().sum();
    assert_eq!(
        hits as i64,
        executions(h, app, "completed").await,
        "runs seen by the witness vs completed executions"
    );
    rows.into_iter().map(|r| (r.0, r.1)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cron_app_runs_each_tick_once_and_can_be_paused_overridden_resumed_and_triggered() {
    let _one = ONE_AT_A_TIME.lock().await;
    let h = Harness::start().await;
    h.spawn_scheduler();
    let witness = Witness::start().await;
    let app = unique_app("cron");
    let repo = AppRepo::create(h.tmp.path(), &app);
    let mut spec = cron_spec(
        &app,
        &repo,
        "* * * * * *",
        &format!(
            "{} && echo tick from $NORN_TEST_VAR",
            reported_run(&witness)
        ),
        // Under load a run can outlast a second; `forbid` would then skip a
        // tick on purpose. Here every tick must run.
        json!({"overlap": "allow"}),
    );
    spec["env"] = json!({"NORN_TEST_VAR": "cron"});
    h.register_and_deploy(spec.clone()).await;

    // Every-second ticks run, with the app's env.
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

    // Pause: no tick is scheduled after it and nothing runs any more.
    let (status, body) = h
        .post(&format!("/api/apps/{app}/cron/pause"), json!({}))
        .await;
    assert_eq!(
        (status, body["paused"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let paused_at = Utc::now();
    settled(&h, &app).await;
    let ran_before_pause = witness.counts("run").len();
    // Each tick before the pause ran once, and no second was left out.
    let ticks = each_tick_ran_once(&h, &app, &witness).await;
    assert!(ticks.len() >= 3, "{ticks:?}");
    let seconds: Vec<i64> = ticks.iter().map(|(t, _)| t.timestamp()).collect();
    assert!(
        seconds.windows(2).all(|w| w[1] - w[0] == 1),
        "every-second ticks with a gap: {seconds:?}"
    );
    // Absence can only be observed over time: three would-be ticks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let newest = newest_tick(&h, &app).await.unwrap();
    assert!(
        newest <= paused_at,
        "tick {newest} after pause at {paused_at}"
    );
    assert_eq!(
        witness.counts("run").len(),
        ran_before_pause,
        "a run while paused"
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
    eventually(Duration::from_secs(30), "runs after resume", || async {
        (witness.counts("run").len() >= ran_before_pause + 2).then_some(())
    })
    .await;

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

    // Everything that ever ran, run once each.
    let (status, _) = h
        .post(&format!("/api/apps/{app}/cron/pause"), json!({}))
        .await;
    assert_eq!(status, 200);
    settled(&h, &app).await;
    let ticks = each_tick_ran_once(&h, &app, &witness).await;
    let after: Vec<i64> = ticks
        .iter()
        .filter(|(t, trigger)| *t > resumed_at && trigger == "schedule")
        .map(|(t, _)| t.timestamp())
        .collect();
    assert!(after.len() >= 2, "{ticks:?}");
    assert!(
        after.iter().all(|s| s % 2 == 0) && after.windows(2).all(|w| w[1] - w[0] == 2),
        "ticks after resume off the override's every other second: {after:?}"
    );
    let manual = ticks.iter().filter(|(_, t)| t == "manual").count();
    assert_eq!(manual, 1, "{ticks:?}");

    // Unknown and non-cron apps.
    let (status, _) = h.get("/api/apps/nope/cron").await;
    assert_eq!(status, 404);
    remove_containers(&app).await;
}

/// Whether Docker still has the container `name`, running or not.
async fn container_exists(name: &str) -> bool {
    let want = format!("/{name}");
    all_containers()
        .await
        .iter()
        .any(|c| c.names.iter().flatten().any(|n| *n == want))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cron_runs_are_killed_at_their_timeout_and_follow_their_overlap_policy() {
    let _one = ONE_AT_A_TIME.lock().await;
    let h = Harness::start().await;
    h.spawn_scheduler();
    let witness = Witness::start().await;
    let slow = unique_app("cron-timeout");
    let forbid = unique_app("cron-forbid");
    let replace = unique_app("cron-replace");
    let repo = AppRepo::create(h.tmp.path(), &slow);
    // Beats to the witness every 0.2 s for 20 s or more, then says it is done;
    // its timeout is 2 s.
    let beating = format!(
        "id=$(busybox cat /proc/sys/kernel/random/uuid); echo \"started $id\"; i=0; \
         while [ $i -lt 100 ]; do {}; busybox sleep 0.2; i=$((i+1)); done; {}",
        witness.get("beat/$id"),
        witness.get("done/$id")
    );
    for spec in [
        cron_spec(
            &slow,
            &repo,
            "*/3 * * * * *",
            &beating,
            json!({"timeout": "2s", "overlap": "allow"}),
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

    // Timeout: killed at its deadline, recorded by its worker with its
    // output so far. The run picked is one the witness saw beating and whose
    // container started at least a second before its deadline (one that
    // only started at its deadline under load proves nothing; app
    // containers join the app network, which makes a start slower than the
    // host network did) and that its worker ended (not the sweep, which calls an
    // execution lost 30 s past its deadline).
    type Ended = (String, DateTime<Utc>, DateTime<Utc>, String);
    let (container, deadline, finished, output): Ended = eventually(
        Duration::from_secs(60),
        "a timed-out run that beat",
        || async {
            let rows: Vec<Ended> = sqlx::query_as(
                "SELECT container, deadline_at, finished_at, output FROM cron_executions
                 WHERE app = $1 AND status = 'timed_out' AND reason = 'timed out after 2s'
                   AND container_started_at < deadline_at - interval '1 second'
                 ORDER BY id",
            )
            .bind(&slow)
            .fetch_all(&h.pool)
            .await
            .unwrap();
            rows.into_iter().find(|r| {
                started_id(&r.3).is_some_and(|id| !witness.times(&format!("/beat/{id}")).is_empty())
            })
        },
    )
    .await;
    let run = started_id(&output).unwrap();
    assert!(
        finished >= deadline - chrono::Duration::milliseconds(50),
        "{container} ended at {finished}, before its deadline {deadline}"
    );
    assert!(
        !container_exists(&container).await,
        "the timed-out container {container} is still there"
    );
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

    // Replace: the running execution is ended when the next tick starts, and
    // its container removed.
    let (reason, replaced): (String, String) =
        eventually(Duration::from_secs(60), "a replaced run", || async {
            sqlx::query_as(
                "SELECT reason, container FROM cron_executions
                 WHERE app = $1 AND status = 'failed' AND reason LIKE 'replaced%'",
            )
            .bind(&replace)
            .fetch_optional(&h.pool)
            .await
            .unwrap()
        })
        .await;
    assert!(reason.contains("overlap: replace"), "{reason}");
    eventually(
        Duration::from_secs(30),
        "the replaced container removed",
        || async { (!container_exists(&replaced).await).then_some(()) },
    )
    .await;

    // The timed-out run stopped beating at its deadline (10 s of slack for a
    // loaded engine) and never finished: without the kill it beats until
    // 20 s or more after it started, then reports done.
    let would_be_done = deadline + chrono::Duration::seconds(22);
    if let Ok(wait) = (would_be_done - Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
    let beats = witness.times(&format!("/beat/{run}"));
    let last = beats.iter().max().unwrap();
    println!(
        "timed-out run: {} beats, the last {} ms after its deadline; recorded {} ms after it",
        beats.len(),
        (*last - deadline).num_milliseconds(),
        (finished - deadline).num_milliseconds()
    );
    assert!(
        *last <= deadline + chrono::Duration::seconds(10),
        "beat at {last}, deadline {deadline} ({} beats)",
        beats.len()
    );
    assert!(
        witness.times(&format!("/done/{run}")).is_empty(),
        "the run {run} outlived its timeout and finished"
    );
    for app in [&slow, &forbid, &replace] {
        let _ = h
            .post(&format!("/api/apps/{app}/cron/pause"), json!({}))
            .await;
        remove_containers(app).await;
    }
}

/// The id a beating run printed (`started <id>`).
fn started_id(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("started "))
        .map(|id| id.trim().to_owned())
}

/// App `<p>-x` with process `y` and app `<p>` with process `x-y` once had the
/// same cron container name at every tick, and each start force-removed the
/// other's container. Both run at the same ticks now, and every run reaches
/// its end (reported to the witness after a second of work).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cron_apps_whose_names_would_have_collided_both_run_at_the_same_tick() {
    let _one = ONE_AT_A_TIME.lock().await;
    let h = Harness::start().await;
    h.spawn_scheduler();
    let witness = Witness::start().await;
    let short = unique_app("coll");
    let long = format!("{short}-x");
    norn_shared::testing::track(norn_shared::testing::Leftover::App(long.clone()));
    for (app, process) in [(&long, "y"), (&short, "x-y")] {
        let repo = AppRepo::create(h.tmp.path(), app);
        let command = format!("busybox sleep 1 && {}", witness.get(&format!("done/{app}")));
        h.register_and_deploy(json!({
            "name": app,
            "repo": {"url": repo.url()},
            // Every tick runs (`allow`), so both apps run at the same ticks
            // (with `forbid` each skips ticks while it runs, and under load
            // their ticks may never coincide).
            "processes": {process: {
                "schedule": "*/2 * * * * *", "command": command, "cron": {"overlap": "allow"},
            }},
        }))
        .await;
    }
    let both_completed = || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM cron_executions a JOIN cron_executions b
               ON a.scheduled_at = b.scheduled_at
             WHERE a.app = $1 AND b.app = $2 AND a.status = 'completed' AND b.status = 'completed'",
        )
        .bind(&long)
        .bind(&short)
        .fetch_one(&h.pool)
        .await
        .unwrap();
        n
    };
    eventually(
        Duration::from_secs(90),
        "both apps completing one tick",
        || async { (both_completed().await >= 3).then_some(()) },
    )
    .await;
    let failed: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT app, reason FROM cron_executions WHERE app IN ($1, $2) AND status <> 'completed'
           AND status <> 'running'",
    )
    .bind(&long)
    .bind(&short)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert!(failed.is_empty(), "runs that did not complete: {failed:?}");
    for app in [&long, &short] {
        let reported = witness
            .counts("done")
            .get(app.as_str())
            .copied()
            .unwrap_or(0);
        assert!(reported >= 3, "{app} reported {reported} finished runs");
    }
}
