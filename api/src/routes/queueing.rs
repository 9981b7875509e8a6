//! What a new deploy does to the deploys of the same app that still wait:
//! supersede them (the default) or queue behind them up to a limit.

use norn_shared::db::apps::{self, App};
use norn_shared::db::deployments::{self, NewDeployment};
use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::domain::{DeploymentStatus, GitRef, new_deployment_id};
use norn_shared::events::{self, Event, EventBody};
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

/// A deploy to queue: [`queue_deploy`].
pub struct DeployRequest<'a> {
    pub git_ref: &'a GitRef,
    pub idempotency_key: Option<&'a str>,
    /// Who asked (a token's name, `webhook:github`, …).
    pub actor: &'a str,
    pub max_queued: i64,
    /// Recorded with the `deploy.queued` saga event.
    pub metadata: serde_json::Value,
}

/// What [`queue_deploy`] did.
pub struct Queued {
    pub id: String,
    pub status: DeploymentStatus,
    /// `false`: the idempotency key named an earlier deployment (`id`), and
    /// nothing was written.
    pub created: bool,
    pub superseded: Vec<String>,
}

/// Records a `queued` deployment, applies the queue policy, pushes its job
/// and records the saga event and the live event, all in the caller's
/// transaction, with the app locked ([`lock_app`]).
pub async fn queue_deploy(
    tx: &mut PgConnection,
    app: &App,
    req: &DeployRequest<'_>,
) -> ApiResult<Queued> {
    let id = new_deployment_id();
    let (deployment, created) = deployments::insert_queued(
        tx,
        &NewDeployment {
            id: &id,
            app: &app.id,
            git_ref: req.git_ref.as_str(),
            idempotency_key: req.idempotency_key,
            triggered_by: req.actor,
        },
    )
    .await?;
    if !created {
        return Ok(Queued {
            status: deployment.status(),
            id: deployment.id,
            created: false,
            superseded: Vec::new(),
        });
    }
    let superseded = admit_and_enqueue(tx, app, &id, req.max_queued, req.actor).await?;
    saga::append(
        tx,
        NewSagaEvent {
            saga_id: &id,
            app: &app.id,
            category: "deploy",
            action: "deploy.queued",
            step: None,
            message: req.git_ref.as_str(),
            actor: req.actor,
            metadata: req.metadata.clone(),
        },
    )
    .await?;
    events::publish(
        tx,
        &Event::new(
            &app.id,
            EventBody::DeployQueued(Box::new(deployment.clone())),
        ),
    )
    .await?;
    Ok(Queued {
        id,
        status: DeploymentStatus::Queued,
        created: true,
        superseded,
    })
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
