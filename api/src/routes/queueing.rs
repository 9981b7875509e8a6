//! What a new deploy does to the deploys of the same app that still wait:
//! supersede them (the default) or queue behind them up to a limit.

use norn_shared::db::apps::{self, App};
use norn_shared::db::deployments;
use norn_shared::infraspec::QueuePolicy;
use norn_shared::jobs::DeployJob;
use norn_shared::queue::{self, Queue};
use sqlx::PgConnection;

use crate::error::{ApiError, ApiResult};

/// How long a client told 429 should wait: roughly one short deploy.
const RETRY_AFTER_SECS: u64 = 30;

/// Locks the app's row for the rest of the transaction (deploys of one app
/// are queued one at a time) and returns the app; 404 if it is unknown.
pub async fn lock_app(conn: &mut PgConnection, app: &str) -> ApiResult<App> {
    let unknown = || ApiError::NotFound(format!("app {app} is not registered"));
    if !apps::lock(conn, app).await? {
        return Err(unknown());
    }
    apps::get(conn, app)
        .await
        .map_err(super::apps::invalid_spec)?
        .ok_or_else(unknown)
}

/// Called with the app locked ([`lock_app`]) and the new deployment `id`
/// inserted: applies the app's queue policy, then pushes the deploy job.
/// Returns the ids it superseded.
pub async fn admit_and_enqueue(
    conn: &mut PgConnection,
    app: &App,
    id: &str,
    max_queued: i64,
    actor: &str,
) -> ApiResult<Vec<String>> {
    let superseded = admit(
        conn,
        &app.id,
        id,
        app.spec.deploy_policy.queue,
        max_queued,
        actor,
    )
    .await?;
    let job = DeployJob {
        deployment_id: id.to_owned(),
        app: app.id.clone(),
    };
    queue::enqueue(conn, Queue::Deploy, &job, Some(id)).await?;
    Ok(superseded)
}

async fn admit(
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
    deployments::fail_with_trail(conn, id, app, reason, action, actor).await?;
    Ok(())
}
