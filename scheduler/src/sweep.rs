//! Finds work that went wrong silently: ticks that did not start within
//! their grace period, executions past their deadline that no worker
//! finished (the worker died), and interrupted forges (`recovery.rs`). All
//! become saga events and `/ws` events.

use norn_shared::db::cron::RunStatus;
use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::events::{self, CronEnded, CronMissed, Event, EventBody};
use sqlx::PgPool;

use crate::SchedulerError;

/// How long after its deadline an execution is declared lost; a live worker
/// records its own timeout at the deadline.
const LOST_AFTER_DEADLINE_SECS: f64 = 30.0;

pub async fn sweep(pool: &PgPool) -> Result<(), SchedulerError> {
    report_late_ticks(pool).await?;
    report_lost_executions(pool).await?;
    end_lost_invocations(pool).await?;
    crate::recovery::fail_interrupted_forges(pool).await?;
    crate::recovery::requeue_abandoned_deploys(pool).await?;
    expire_previews(pool).await?;
    Ok(())
}

/// Previews nobody pushed to for their app's `previews.ttl` are torn down.
async fn expire_previews(pool: &PgPool) -> Result<(), SchedulerError> {
    let mut tx = pool.begin().await?;
    for app in norn_shared::db::previews::expired(&mut tx).await? {
        let why = "idle past previews.ttl";
        norn_shared::preview::begin_teardown(&mut tx, &app, why, "scheduler").await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn report_late_ticks(pool: &PgPool) -> Result<(), SchedulerError> {
    let mut tx = pool.begin().await?;
    // The grace period is per app (infraspec); queued ticks are few, so the
    // filter runs here rather than in SQL over JSON.
    let queued: Vec<(String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT app, process, scheduled_at FROM cron_ticks
         WHERE state = 'queued' AND NOT missed_reported AND scheduled_at < now() - interval '1 second'
         ORDER BY scheduled_at LIMIT 500 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await?;
    let now = chrono::Utc::now();
    for (app, process, at) in queued {
        let grace = match crate::incidents::valid_app(&mut tx, &app).await? {
            Some(a) => a
                .spec
                .processes
                .get(&process)
                .and_then(|p| p.schedule.as_ref())
                .map(|s| s.policy.grace)
                .unwrap_or_default(),
            None => Default::default(),
        };
        if (now - at).to_std().unwrap_or_default() < grace {
            continue;
        }
        sqlx::query(
            "UPDATE cron_ticks SET missed_reported = true
             WHERE app = $1 AND process = $2 AND scheduled_at = $3",
        )
        .bind(&app)
        .bind(&process)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let message = format!(
            "the tick of {at} did not start within its grace period ({grace:?}); no worker took it"
        );
        let payload = CronMissed {
            process: process.clone(),
            count: 1,
            from: at,
            to: at,
            reason: message.clone(),
        };
        trail(&mut tx, &app, &process, "cron.missed", &message, &payload).await?;
        let missed = EventBody::CronMissed(payload);
        events::publish(&mut tx, &Event::new(&app, missed)).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn report_lost_executions(pool: &PgPool) -> Result<(), SchedulerError> {
    let mut tx = pool.begin().await?;
    let lost: Vec<(i64, String, Option<String>, Option<String>)> = sqlx::query_as(
        "UPDATE cron_executions SET status = 'timed_out', finished_at = now(),
            duration_ms = (extract(epoch FROM now() - started_at) * 1000)::bigint,
            reason = 'no worker finished it by its deadline (the worker was lost); its container may need removing'
         WHERE id IN (SELECT id FROM cron_executions WHERE status = 'running'
                      AND deadline_at < now() - make_interval(secs => $1) LIMIT 100 FOR UPDATE SKIP LOCKED)
         RETURNING id, app, process, worker",
    )
    .bind(LOST_AFTER_DEADLINE_SECS)
    .fetch_all(&mut *tx)
    .await?;
    for (id, app, process, worker) in lost {
        let process = process.unwrap_or_default();
        let message = format!(
            "execution {id} passed its deadline with no result; worker {} lost",
            worker.as_deref().unwrap_or("?")
        );
        let payload = CronEnded {
            execution_id: id,
            process: process.clone(),
            status: RunStatus::TimedOut,
            exit_code: None,
            error: Some(message.clone()),
            output: None,
        };
        trail(
            &mut tx,
            &app,
            &process,
            "cron.timed_out",
            &message,
            &payload,
        )
        .await?;
        let failed = EventBody::CronFailed(payload);
        events::publish(&mut tx, &Event::new(&app, failed)).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Ends function runs no worker will end: their worker stopped beating, or
/// they are long past their deadline. Each frees its slot for the next
/// waiting invocation, like any other end.
async fn end_lost_invocations(pool: &PgPool) -> Result<(), SchedulerError> {
    use norn_shared::db::functions::{self, Outcome, Status};
    let mut conn = pool.acquire().await?;
    let lost = functions::lost(&mut conn, norn_shared::db::nodes::LOST_AFTER).await?;
    for (id, app, process, why) in lost {
        let concurrency = functions::concurrency_of(&mut conn, &app, &process).await;
        let mut tx = pool.begin().await?;
        let outcome = Outcome::failed(Status::Failed, why.reason());
        if functions::end(&mut tx, id, &outcome, concurrency)
            .await?
            .is_some()
        {
            tracing::warn!(%app, execution = id, reason = why.reason(), "function run ended by the sweep");
        }
        tx.commit().await?;
    }
    Ok(())
}

/// A scheduler-made entry in an app's cron saga (`cron:<app>:<process>`).
pub(crate) async fn trail(
    conn: &mut sqlx::PgConnection,
    app: &str,
    process: &str,
    action: &str,
    message: &str,
    metadata: &impl serde::Serialize,
) -> Result<(), sqlx::Error> {
    saga::append(
        conn,
        NewSagaEvent {
            saga_id: &format!("cron:{app}:{process}"),
            app,
            category: "cron",
            action,
            step: None,
            message,
            actor: "scheduler",
            metadata: serde_json::to_value(metadata).unwrap_or_default(),
        },
    )
    .await
}
