//! Operations a dead process left half-done that nobody else will finish.
//! Deploys are resumed by the worker that takes their job over; when no job
//! is left to do that (its retries ran out during an outage, or a fenced
//! worker acked it), the sweep queues one again. A forge (provision or
//! teardown) is not resumable, so one left `forging` or `tearing_down` with no
//! live app lease ends `forge_failed`. A lease that is still live means a
//! process holds the operation: it is left alone.

use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::events::{self, Event, EventBody, ForgeFailed};
use norn_shared::jobs::DeployJob;
use norn_shared::queue::{self, Queue};
use serde_json::json;
use sqlx::PgPool;

use crate::SchedulerError;

pub const INTERRUPTED: &str = "norn restarted during operation";

/// Marks interrupted forges failed; returns their apps.
pub async fn fail_interrupted_forges(pool: &PgPool) -> Result<Vec<String>, SchedulerError> {
    let mut tx = pool.begin().await?;
    let apps: Vec<(String, String)> = sqlx::query_as(
        "WITH stuck AS (
            SELECT app, status FROM forge_states f
            WHERE status IN ('forging', 'tearing_down')
              AND (started_at IS NULL OR started_at < now() - interval '30 seconds')
              AND NOT EXISTS (SELECT 1 FROM app_leases l WHERE l.app = f.app AND l.expires_at > now())
            FOR UPDATE SKIP LOCKED)
         UPDATE forge_states f SET status = 'forge_failed', error = $1, finished_at = now()
         FROM stuck WHERE f.app = stuck.app
         RETURNING f.app, stuck.status",
    )
    .bind(INTERRUPTED)
    .fetch_all(&mut *tx)
    .await?;
    for (app, was) in &apps {
        saga::append(
            &mut tx,
            NewSagaEvent {
                saga_id: &format!("forge:{app}"),
                app,
                category: "forge",
                action: "forge.failed",
                step: None,
                message: INTERRUPTED,
                actor: "recovery",
                metadata: json!({"was": was}),
            },
        )
        .await?;
        events::publish(
            &mut tx,
            &Event::new(
                app,
                EventBody::ForgeFailed(ForgeFailed {
                    operation: None,
                    step: None,
                    error: INTERRUPTED.to_owned(),
                    was: was.parse().ok(),
                }),
            ),
        )
        .await?;
    }
    tx.commit().await?;
    for (app, was) in &apps {
        tracing::warn!(app = %app, was = %was, "forge interrupted by a restart; marked forge_failed");
    }
    Ok(apps.into_iter().map(|(a, _)| a).collect())
}

/// Deployments in flight that nothing will ever run again: no live lease of
/// theirs, no deploy job pending, running or still retrying, and quiet for a
/// minute. Each gets a fresh job (the worker resumes it, or fails it once its
/// attempts are used up). Returns their ids.
pub async fn requeue_abandoned_deploys(pool: &PgPool) -> Result<Vec<String>, SchedulerError> {
    let mut tx = pool.begin().await?;
    let stranded: Vec<(String, String)> = sqlx::query_as(
        "SELECT d.id, d.app FROM deployments d
         WHERE d.status NOT IN ('deployed', 'failed', 'rolled_back')
           AND d.started_at < now() - interval '1 minute'
           AND NOT EXISTS (SELECT 1 FROM app_leases l
                           WHERE l.app = d.app AND l.expires_at > now() AND l.holder LIKE '%/' || d.id)
           AND NOT EXISTS (SELECT 1 FROM apalis.jobs j
                           WHERE j.job_type = $1
                             AND (j.idempotency_key = d.id OR j.idempotency_key LIKE d.id || ':%')
                             AND (j.status IN ('Pending', 'Running', 'Queued')
                                  OR (j.status = 'Failed' AND j.attempts < j.max_attempts)))
         ORDER BY d.started_at LIMIT 100
         FOR UPDATE OF d SKIP LOCKED",
    )
    .bind(Queue::Deploy.name())
    .fetch_all(&mut *tx)
    .await?;
    for (id, app) in &stranded {
        let job = DeployJob {
            deployment_id: id.clone(),
            app: app.clone(),
        };
        let key = format!("{id}:requeued:{}", uuid::Uuid::now_v7());
        queue::enqueue(&mut tx, Queue::Deploy, &job, Some(&key)).await?;
        saga::append(
            &mut tx,
            NewSagaEvent {
                saga_id: id,
                app,
                category: "deploy",
                action: "deploy.requeued",
                step: None,
                message: "no worker held it and no job was left to resume it",
                actor: "recovery",
                metadata: json!({}),
            },
        )
        .await?;
    }
    tx.commit().await?;
    for (id, app) in &stranded {
        tracing::warn!(app = %app, deployment.id = %id, "abandoned deployment queued again");
    }
    Ok(stranded.into_iter().map(|(id, _)| id).collect())
}
