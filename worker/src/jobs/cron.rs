//! The cron job: start one tick's execution (at most once, whatever the
//! delivery count), run `sh -c <command>` in the app's current image with the
//! policy's limits and timeout, and record how it ended.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{BoxDynError, Data};
use chrono::{DateTime, Utc};
use norn_shared::db::cron::RunStatus;
use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::db::{apps, cron};
use norn_shared::events::{self, CronEnded, CronSkipped, CronStarted, Event, EventBody};
use norn_shared::infraspec::{CronPolicy, Overlap};
use norn_shared::jobs::CronJob;
use sqlx::PgConnection;

use crate::WorkerError;
use crate::adapters::{Finished, Limits, MaskedTail, OneOff};
use crate::state::WorkerState;
use norn_shared::text::Tail;

/// Output kept per execution (the end, where errors are).
const MAX_OUTPUT: usize = 64 * 1024;

pub async fn run(job: CronJob, state: Data<Arc<WorkerState>>) -> Result<(), BoxDynError> {
    let state: Arc<WorkerState> = (*state).clone();
    let _busy = state.busy();
    execute(&job, &state).await.map_err(|e| {
        tracing::error!(app = %job.app, scheduled_at = %job.scheduled_at, error = %e,
            "cron job failed; it will be retried");
        Box::new(e) as BoxDynError
    })
}

/// What `claim` decided to run.
struct Start {
    id: i64,
    oneoff: OneOff,
    deadline: DateTime<Utc>,
}

async fn execute(job: &CronJob, state: &WorkerState) -> Result<(), WorkerError> {
    let Some(start) = claim(job, state).await? else {
        return Ok(());
    };
    // Only the end of the output is kept (in bounded memory, NUL replaced),
    // with the app's secrets masked.
    let masker = match crate::services::masker(state, &job.app).await {
        Ok(m) => m,
        Err(e) => {
            let reason = Err(format!("could not read the app's secrets: {e}"));
            return record_end(job, state, &start, reason, String::new()).await;
        }
    };
    let mut output = MaskedTail {
        masker,
        tail: Tail::new(MAX_OUTPUT),
    };
    let finished = match state.runtime.start_once(&start.oneoff).await {
        Err(e) => Err(format!("could not start the container: {e}")),
        Ok(()) => {
            sqlx::query(
                "UPDATE cron_executions SET container_started_at = clock_timestamp() WHERE id = $1",
            )
            .bind(start.id)
            .execute(&state.pool)
            .await?;
            let left = (start.deadline - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            state
                .runtime
                .finish_once(&start.oneoff.name, left, &mut output)
                .await
                .map_err(|e| format!("lost the container: {e}"))
        }
    };
    record_end(job, state, &start, finished, output.finish()).await
}

fn saga_id(job: &CronJob) -> String {
    format!(
        "cron:{}:{}:{}",
        job.app,
        job.process,
        job.scheduled_at.to_rfc3339()
    )
}

/// In one transaction: take the tick (only if still queued), apply the
/// overlap policy under the app's cron-state row lock, insert the execution.
async fn claim(job: &CronJob, state: &WorkerState) -> Result<Option<Start>, WorkerError> {
    let mut tx = state.pool.begin().await?;
    let tick: Option<(String, String)> = sqlx::query_as(
        "SELECT state, trigger FROM cron_ticks WHERE app = $1 AND process = $2 AND scheduled_at = $3 FOR UPDATE",
    )
    .bind(&job.app)
    .bind(&job.process)
    .bind(job.scheduled_at)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((tick_state, trigger)) = tick else {
        return Ok(None);
    };
    if tick_state != "queued" {
        // Delivered again after it started (or was skipped): never run a tick twice.
        return Ok(None);
    }
    let cron_state = cron::lock(&mut tx, &job.app).await?;
    let app = apps::get(&mut tx, &job.app).await?;
    let process = app
        .as_ref()
        .and_then(|a| a.spec.processes.get(&job.process).map(|p| (a, p)));
    let (Some(cs), Some((app, process))) = (cron_state, process) else {
        skip(&mut tx, job, "the app no longer has this scheduled process").await?;
        tx.commit().await?;
        return Ok(None);
    };
    let (Some(image), Some(schedule), Some(command)) = (
        cs.image_tag.clone(),
        process.schedule.as_ref(),
        process.command.clone(),
    ) else {
        skip(&mut tx, job, "the app has no deployed image yet").await?;
        tx.commit().await?;
        return Ok(None);
    };
    let policy = schedule.policy.clone();
    // The app's own credentials only; without them the run cannot start.
    let env = match crate::services::app_env(state, &job.app, &app.spec).await {
        Ok(env) => env,
        Err(e) => {
            skip(&mut tx, job, &e.to_string()).await?;
            tx.commit().await?;
            return Ok(None);
        }
    };
    let running: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT id, container FROM cron_executions WHERE app = $1 AND process = $2 AND status = 'running'",
    )
    .bind(&job.app)
    .bind(&job.process)
    .fetch_all(&mut *tx)
    .await?;
    let mut replaced = Vec::new();
    // Someone asked for this run by hand: it runs even beside a scheduled one.
    let overlap = if trigger == "manual" && policy.overlap == Overlap::Forbid {
        Overlap::Allow
    } else {
        policy.overlap
    };
    match overlap {
        Overlap::Forbid if !running.is_empty() => {
            let reason = format!(
                "execution {} is still running (overlap: forbid)",
                running[0].0
            );
            skip(&mut tx, job, &reason).await?;
            tx.commit().await?;
            return Ok(None);
        }
        Overlap::Replace => {
            for (id, container) in running {
                replace(&mut tx, job, id).await?;
                replaced.extend(container);
            }
        }
        _ => {}
    }
    // `_` separates: app and process names cannot contain it, so app `a-b`
    // process `c` and app `a` process `b-c` never share a container name.
    let name = format!(
        "{}_{}_cron_{}",
        job.app,
        job.process,
        job.scheduled_at.timestamp_micros()
    );
    // Checked: the spec bounds the timeout, but a date must never panic.
    let deadline = chrono::Duration::from_std(policy.timeout)
        .ok()
        .and_then(|t| Utc::now().checked_add_signed(t))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO cron_executions (app, process, scheduled_at, trigger, image_tag, status, container, worker, deadline_at, started_at)
         SELECT $1, $2, $3, trigger, $4, 'running', $5, $6, $7, clock_timestamp() FROM cron_ticks
         WHERE app = $1 AND process = $2 AND scheduled_at = $3
         RETURNING id",
    )
    .bind(&job.app)
    .bind(&job.process)
    .bind(job.scheduled_at)
    .bind(&image)
    .bind(&name)
    .bind(&state.token)
    .bind(deadline)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE cron_ticks SET state = 'started' WHERE app = $1 AND process = $2 AND scheduled_at = $3",
    )
    .bind(&job.app)
    .bind(&job.process)
    .bind(job.scheduled_at)
    .execute(&mut *tx)
    .await?;
    let payload = CronStarted {
        execution_id: id,
        process: job.process.clone(),
        scheduled_at: job.scheduled_at,
        image_tag: image.clone(),
    };
    trail(
        &mut tx,
        job,
        "cron.started",
        &format!("execution {id} started"),
        &state.token,
        &payload,
    )
    .await?;
    let started = EventBody::CronStarted(payload);
    events::publish(&mut tx, &Event::new(&job.app, started)).await?;
    tx.commit().await?;
    for container in replaced {
        if let Err(e) = state.runtime.remove(&container).await {
            tracing::warn!(app = %job.app, container = %container, error = %e,
                "could not remove a replaced cron container");
        }
    }
    Ok(Some(Start {
        id,
        oneoff: oneoff(job, env, name, image, command, &policy),
        deadline,
    }))
}

fn oneoff(
    job: &CronJob,
    env: BTreeMap<String, String>,
    name: String,
    image: String,
    command: String,
    policy: &CronPolicy,
) -> OneOff {
    OneOff {
        name,
        image,
        command,
        env,
        labels: BTreeMap::from([
            ("norn.app".into(), job.app.clone()),
            ("norn.process".into(), job.process.clone()),
            ("norn.job".into(), "cron".into()),
            ("norn.cron.scheduled".into(), job.scheduled_at.to_rfc3339()),
        ]),
        timeout: policy.timeout,
        limits: Some(Limits {
            memory_mb: policy.memory_mb,
            cpus: policy.cpus,
            pids: policy.pids,
        }),
    }
}

async fn skip(tx: &mut PgConnection, job: &CronJob, reason: &str) -> Result<(), WorkerError> {
    sqlx::query(
        "UPDATE cron_ticks SET state = 'skipped', reason = $4
         WHERE app = $1 AND process = $2 AND scheduled_at = $3",
    )
    .bind(&job.app)
    .bind(&job.process)
    .bind(job.scheduled_at)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    let payload = CronSkipped {
        process: job.process.clone(),
        scheduled_at: job.scheduled_at,
        reason: reason.to_owned(),
    };
    trail(tx, job, "cron.skipped", reason, "worker", &payload).await?;
    let skipped = EventBody::CronSkipped(payload);
    events::publish(tx, &Event::new(&job.app, skipped)).await?;
    Ok(())
}

async fn replace(tx: &mut PgConnection, job: &CronJob, id: i64) -> Result<(), WorkerError> {
    let reason = format!(
        "replaced by the tick of {} (overlap: replace)",
        job.scheduled_at
    );
    sqlx::query(
        "UPDATE cron_executions SET status = 'failed', reason = $2, finished_at = now(),
            duration_ms = (extract(epoch FROM now() - started_at) * 1000)::bigint
         WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .bind(&reason)
    .execute(&mut *tx)
    .await?;
    let payload = CronEnded {
        execution_id: id,
        process: job.process.clone(),
        status: RunStatus::Failed,
        exit_code: None,
        error: Some(reason.clone()),
        output: None,
    };
    trail(tx, job, "cron.failed", &reason, "worker", &payload).await?;
    events::publish(tx, &Event::new(&job.app, EventBody::CronFailed(payload))).await?;
    Ok(())
}

async fn trail(
    conn: &mut PgConnection,
    job: &CronJob,
    action: &str,
    message: &str,
    actor: &str,
    metadata: &impl serde::Serialize,
) -> Result<(), sqlx::Error> {
    saga::append(
        conn,
        NewSagaEvent {
            saga_id: &saga_id(job),
            app: &job.app,
            category: "cron",
            action,
            step: None,
            message,
            actor,
            metadata: serde_json::to_value(metadata).unwrap_or_default(),
        },
    )
    .await
}

async fn record_end(
    job: &CronJob,
    state: &WorkerState,
    start: &Start,
    finished: Result<Finished, String>,
    output: String,
) -> Result<(), WorkerError> {
    let timeout = start.oneoff.timeout;
    let (status, exit_code, reason) = match finished {
        Ok(Finished::Exited { exit_code }) if exit_code == 0 => {
            (RunStatus::Completed, Some(exit_code), None)
        }
        Ok(Finished::Exited { exit_code }) => (
            RunStatus::Failed,
            Some(exit_code),
            Some(format!("exited with {exit_code}")),
        ),
        Ok(Finished::TimedOut) => (
            RunStatus::TimedOut,
            None,
            Some(format!("timed out after {timeout:?}")),
        ),
        Ok(Finished::OutOfMemory) => (
            RunStatus::Failed,
            None,
            Some(format!(
                "killed: out of memory (limit {} MiB)",
                start.oneoff.limits.map(|l| l.memory_mb).unwrap_or_default()
            )),
        ),
        Err(reason) => (RunStatus::Failed, None, Some(reason)),
    };
    let mut tx = state.pool.begin().await?;
    // Conditional: an execution already ended by `replace` or the scheduler's
    // sweep keeps that outcome.
    let updated = sqlx::query(
        "UPDATE cron_executions SET status = $2, exit_code = $3, output = $4, reason = $5,
            finished_at = clock_timestamp(),
            duration_ms = (extract(epoch FROM clock_timestamp() - started_at) * 1000)::bigint
         WHERE id = $1 AND status = 'running'",
    )
    .bind(start.id)
    .bind(status)
    .bind(exit_code.map(|c| c as i32))
    .bind(&output)
    .bind(&reason)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 1 {
        let action = match status {
            RunStatus::Completed => "cron.completed",
            RunStatus::TimedOut => "cron.timed_out",
            _ => "cron.failed",
        };
        let payload = CronEnded {
            execution_id: start.id,
            process: job.process.clone(),
            status,
            exit_code: exit_code.map(|c| c as i32),
            error: reason.clone(),
            output: Some(output),
        };
        let message = reason.clone().unwrap_or_else(|| "completed".into());
        trail(&mut tx, job, action, &message, &state.token, &payload).await?;
        let body = if status == RunStatus::Completed {
            EventBody::CronCompleted(payload)
        } else {
            EventBody::CronFailed(payload)
        };
        events::publish(&mut tx, &Event::new(&job.app, body)).await?;
    }
    tx.commit().await?;
    tracing::info!(app = %job.app, execution = start.id, status = status.as_str(), "cron execution ended");
    Ok(())
}
