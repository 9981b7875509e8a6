//! What a new deploy does to the deploys of the same app that still wait:
//! supersede them (the default) or queue behind them up to a limit.

use norn_shared::db::deployments::{self, Update};
use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::domain::DeploymentStatus;
use norn_shared::events::{self, Event};
use norn_shared::infraspec::QueuePolicy;
use serde_json::json;
use sqlx::PgConnection;

use crate::error::{ApiError, ApiResult};

/// How long a client told 429 should wait: roughly one short deploy.
const RETRY_AFTER_SECS: u64 = 30;

/// Called with the app row locked and the new deployment `new_id` inserted.
/// Returns the ids it superseded.
pub async fn admit(
    conn: &mut PgConnection,
    app: &str,
    new_id: &str,
    policy: QueuePolicy,
    max_queued: i64,
    actor: &str,
) -> ApiResult<Vec<String>> {
    let older: Vec<String> = deployments::waiting(conn, app)
        .await?
        .into_iter()
        .filter(|id| id != new_id)
        .collect();
    match policy {
        QueuePolicy::Fifo => {
            if older.len() as i64 >= max_queued {
                return Err(ApiError::TooMany {
                    message: format!(
                        "app {app} already has {} queued deploys (NORN_MAX_QUEUED_PER_APP = {max_queued})",
                        older.len()
                    ),
                    retry_after_secs: RETRY_AFTER_SECS,
                });
            }
            Ok(Vec::new())
        }
        QueuePolicy::Supersede => {
            let reason = format!("superseded by {new_id}");
            for id in &older {
                end_waiting(conn, app, id, &reason, "deploy.superseded", actor).await?;
            }
            Ok(older)
        }
    }
}

/// Ends a deployment no worker has taken on yet: `failed` with `reason`, a
/// saga event `action` and the live `deploy.failed` event, in the caller's
/// transaction.
pub async fn end_waiting(
    conn: &mut PgConnection,
    app: &str,
    id: &str,
    reason: &str,
    action: &str,
    actor: &str,
) -> ApiResult<()> {
    deployments::update(
        conn,
        id,
        &Update {
            status: Some(DeploymentStatus::Failed),
            error: Some(reason),
            ..Default::default()
        },
    )
    .await?;
    saga::append(
        conn,
        NewSagaEvent {
            saga_id: id,
            app,
            category: "deploy",
            action,
            step: None,
            message: reason,
            actor,
            metadata: json!({}),
        },
    )
    .await?;
    events::publish(
        conn,
        &Event::new(
            "deploy.failed",
            app,
            json!({"deploymentId": id, "error": reason}),
        ),
    )
    .await?;
    Ok(())
}
