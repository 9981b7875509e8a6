//! Operations a dead process left half-done that nobody else will finish.
//! Deploys are resumed by the worker that takes their job over; a forge
//! (provision or teardown) is not resumable, so one left `forging` or
//! `tearing_down` with no live app lease ends `forge_failed`. A lease that is
//! still live means a process holds the operation: it is left alone.

use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::events::{self, Event};
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
                "forge.failed",
                app,
                json!({"error": INTERRUPTED, "was": was}),
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
