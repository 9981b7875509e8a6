//! The `deployments` table. Status changes go through [`update`], which
//! enforces the state machine from `domain::DeploymentStatus`.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use sqlx::types::Json;

use super::DbError;
use crate::domain::{DeploymentKind, DeploymentStatus, StepEntry};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    pub app: String,
    #[sqlx(rename = "ref")]
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit_sha: Option<String>,
    pub image_tag: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: DeploymentStatus,
    /// The steps it ran or is running, in pipeline order.
    #[schema(value_type = Vec<StepEntry>)]
    pub steps: Json<Vec<StepEntry>>,
    pub error: Option<String>,
    pub failed_step: Option<String>,
    pub triggered_by: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Workers that took this deployment on; more than one means it was resumed.
    pub attempts: i32,
    pub cancel_requested_by: Option<String>,
    /// A rollback reuses the image of `rollback_of`.
    #[sqlx(try_from = "String")]
    pub kind: DeploymentKind,
    pub rollback_of: Option<String>,
}

impl Deployment {
    /// The row without step output: lists stay small however much a build
    /// printed (the output tail is in the single-deployment read, the full
    /// log in `step_logs`).
    fn without_output(mut self) -> Self {
        for entry in &mut self.steps.0 {
            entry.output = None;
        }
        self
    }

    pub fn status(&self) -> DeploymentStatus {
        self.status
    }
}

pub struct NewDeployment<'a> {
    pub id: &'a str,
    pub app: &'a str,
    pub git_ref: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub triggered_by: &'a str,
}

macro_rules! columns {
    () => {
        "id, app, ref, commit_sha, image_tag, status, steps, error, failed_step, \
         triggered_by, started_at, finished_at, attempts, cancel_requested_by, kind, rollback_of"
    };
}

/// Inserts a `queued` deployment. With an idempotency key that was used before
/// for this app, returns the earlier deployment and `false`.
pub async fn insert_queued(
    conn: &mut PgConnection,
    new: &NewDeployment<'_>,
) -> Result<(Deployment, bool), DbError> {
    let inserted: Option<Deployment> = sqlx::query_as(concat!(
        "INSERT INTO deployments (id, app, ref, idempotency_key, triggered_by)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (app, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING ",
        columns!(),
        ""
    ))
    .bind(new.id)
    .bind(new.app)
    .bind(new.git_ref)
    .bind(new.idempotency_key)
    .bind(new.triggered_by)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(d) = inserted {
        return Ok((d, true));
    }
    let existing: Deployment = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM deployments WHERE app = $1 AND idempotency_key = $2"
    ))
    .bind(new.app)
    .bind(new.idempotency_key)
    .fetch_one(&mut *conn)
    .await?;
    Ok((existing, false))
}

pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<Deployment>, DbError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM deployments WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

#[derive(Debug, Default)]
pub struct ListFilter<'a> {
    pub app: Option<&'a str>,
    pub status: Option<DeploymentStatus>,
    pub limit: i64,
}

pub async fn list(
    conn: &mut PgConnection,
    filter: &ListFilter<'_>,
) -> Result<Vec<Deployment>, DbError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM deployments
         WHERE ($1::text IS NULL OR app = $1) AND ($2::text IS NULL OR status = $2)
         ORDER BY started_at DESC, id DESC LIMIT $3"
    ))
    .bind(filter.app)
    .bind(filter.status.map(|s| s.as_str()))
    .bind(filter.limit)
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(Deployment::without_output)
    .collect())
}

/// The newest deployed release of an app: what is serving now.
pub async fn current(conn: &mut PgConnection, app: &str) -> Result<Option<Deployment>, DbError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM deployments WHERE app = $1 AND status = 'deployed'
         ORDER BY finished_at DESC LIMIT 1"
    ))
    .bind(app)
    .fetch_optional(conn)
    .await?)
}

/// Reads `id` and locks its row for the rest of the caller's transaction.
pub async fn lock(conn: &mut PgConnection, id: &str) -> Result<Option<Deployment>, DbError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM deployments WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// NOTIFY channel carrying the id of a deployment whose cancel was requested.
pub const CANCEL_CHANNEL: &str = "norn_deploy_cancel";

/// A worker takes the deployment on under its lease token. `None` when it
/// already ended (canceled or superseded while waiting for the lease).
pub async fn begin_attempt(
    conn: &mut PgConnection,
    id: &str,
    lease_token: i64,
) -> Result<Option<Deployment>, DbError> {
    Ok(sqlx::query_as(concat!(
        "UPDATE deployments SET attempts = attempts + 1, lease_token = $2
         WHERE id = $1 AND status NOT IN ('deployed', 'failed', 'rolled_back')
         RETURNING ",
        columns!(),
        ""
    ))
    .bind(id)
    .bind(lease_token)
    .fetch_optional(conn)
    .await?)
}

/// Who asked to cancel `id`, if anyone did.
pub async fn cancel_requested(pool: &sqlx::PgPool, id: &str) -> Result<Option<String>, DbError> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT cancel_requested_by FROM deployments WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.and_then(|(by,)| by))
}

/// Records a cancel request for a running deployment and wakes its worker.
pub async fn request_cancel(conn: &mut PgConnection, id: &str, by: &str) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE deployments SET cancel_requested_at = now(), cancel_requested_by = $2
         WHERE id = $1 AND cancel_requested_at IS NULL",
    )
    .bind(id)
    .bind(by)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CANCEL_CHANNEL)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether deployment `id` may take its app's lease now: `None` once it
/// ended; `Some(false)` while another deployment of the app goes first. An
/// interrupted deployment (a worker took it on) goes before any waiting one,
/// so a deploy resumed after a crash is never overtaken and then overwrites
/// a newer release; waiting ones go oldest first.
pub async fn turn(conn: &mut PgConnection, id: &str) -> Result<Option<bool>, DbError> {
    let row: Option<(bool,)> = sqlx::query_as(
        "SELECT NOT EXISTS (
            SELECT 1 FROM deployments o
            WHERE o.app = me.app AND o.id <> me.id
              AND o.status NOT IN ('deployed', 'failed', 'rolled_back')
              AND CASE WHEN (o.attempts > 0) <> (me.attempts > 0) THEN o.attempts > 0
                       ELSE (o.started_at, o.id) < (me.started_at, me.id) END)
         FROM deployments me
         WHERE me.id = $1 AND me.status NOT IN ('deployed', 'failed', 'rolled_back')",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(go,)| go))
}

/// Deployments of `app` still waiting for a worker (none has taken them on).
pub async fn waiting(conn: &mut PgConnection, app: &str) -> Result<Vec<String>, DbError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM deployments WHERE app = $1 AND status = 'queued' AND attempts = 0
         ORDER BY started_at, id FOR UPDATE",
    )
    .bind(app)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// What `POST /api/apps/{id}/deploy` answers.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployAnswer {
    pub id: String,
    pub status: DeploymentStatus,
    /// Waiting deployments of the app this one ended (queue policy `supersede`).
    #[serde(default)]
    pub superseded: Vec<String>,
    /// The idempotency key named an earlier deployment: `id` is that one
    /// (present only then).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// What `POST /api/apps/{id}/rollback` answers: a new deployment that
/// puts `target`'s image back.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackAnswer {
    pub id: String,
    pub status: DeploymentStatus,
    /// Always `rollback`.
    pub kind: DeploymentKind,
    /// The deployment whose release comes back.
    pub target: String,
    pub image_tag: Option<String>,
    pub superseded: Vec<String>,
}

/// Whether a cancel ended the deployment at once or asked its worker to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelStatus {
    /// It had not started: it is `failed` now, with the reason.
    Failed,
    /// Its worker stops it at the next step boundary (or at once, mid-step).
    Canceling,
}

/// What `POST /api/deployments/{id}/cancel` answers: `failed` with the
/// reason (it had not started), or `canceling` (its worker is stopping it).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CancelAnswer {
    pub id: String,
    pub status: CancelStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Deployments of `app` a worker has taken on and that have not ended.
pub async fn in_flight(conn: &mut PgConnection, app: &str) -> Result<Vec<String>, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM deployments
         WHERE app = $1 AND status NOT IN ('deployed', 'failed', 'rolled_back')
           AND NOT (status = 'queued' AND attempts = 0)
         ORDER BY started_at, id FOR UPDATE",
    )
    .bind(app)
    .fetch_all(conn)
    .await?)
}

/// Queues a rollback to `target`: a new deployment that reuses its commit and image.
pub async fn insert_rollback(
    conn: &mut PgConnection,
    id: &str,
    target: &Deployment,
    triggered_by: &str,
) -> Result<Deployment, DbError> {
    Ok(sqlx::query_as(concat!(
        "INSERT INTO deployments (id, app, ref, commit_sha, image_tag, triggered_by, kind, rollback_of)
         VALUES ($1, $2, $3, $4, $5, $6, 'rollback', $7)
         RETURNING ",
        columns!(),
        ""
    ))
    .bind(id)
    .bind(&target.app)
    .bind(&target.git_ref)
    .bind(&target.commit_sha)
    .bind(&target.image_tag)
    .bind(triggered_by)
    .bind(&target.id)
    .fetch_one(conn)
    .await?)
}

/// The release a rollback goes back to by default: the newest deployed one
/// (with an image) that finished before the current release.
pub async fn previous_release(
    conn: &mut PgConnection,
    current: &Deployment,
) -> Result<Option<Deployment>, DbError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM deployments
         WHERE app = $1 AND id <> $2 AND status = 'deployed' AND image_tag IS NOT NULL
           AND finished_at < $3
         ORDER BY finished_at DESC LIMIT 1"
    ))
    .bind(&current.app)
    .bind(&current.id)
    .bind(current.finished_at)
    .fetch_optional(conn)
    .await?)
}

/// The image tags of the app's newest `n` releases (deployed, or replaced by
/// a rollback: either may be rolled back to) other than `except` (the
/// release being deployed), and the images of deployments still under way
/// (a queued rollback, a deploy being resumed): what a deploy's cleanup
/// keeps besides its own.
pub async fn release_images(
    conn: &mut PgConnection,
    app: &str,
    except: &str,
    n: i64,
) -> Result<Vec<String>, DbError> {
    Ok(sqlx::query_scalar(
        "(SELECT image_tag FROM (
              SELECT image_tag, max(finished_at) AS last FROM deployments
              WHERE app = $1 AND status IN ('deployed', 'rolled_back') AND image_tag IS NOT NULL
                AND image_tag <> $3
              GROUP BY image_tag) t
          ORDER BY last DESC LIMIT $2)
         UNION
         SELECT image_tag FROM deployments
         WHERE app = $1 AND image_tag IS NOT NULL
           AND status NOT IN ('deployed', 'rolled_back', 'failed')",
    )
    .bind(app)
    .bind(n)
    .bind(except)
    .fetch_all(conn)
    .await?)
}

/// Ends deployment `id` of `app` as `failed` with `reason`, with a saga event
/// `action` by `actor` and the live `deploy.failed` event, in the caller's
/// transaction.
pub async fn fail_with_trail(
    conn: &mut PgConnection,
    id: &str,
    app: &str,
    reason: &str,
    action: &str,
    actor: &str,
) -> Result<(), DbError> {
    update(
        conn,
        id,
        &Update {
            status: Some(DeploymentStatus::Failed),
            error: Some(reason),
            ..Default::default()
        },
    )
    .await?;
    crate::db::saga::append(
        conn,
        crate::db::saga::NewSagaEvent {
            saga_id: id,
            app,
            category: "deploy",
            action,
            step: None,
            message: reason,
            actor,
            metadata: serde_json::json!({}),
        },
    )
    .await?;
    crate::events::publish(
        conn,
        &crate::events::Event::new(
            app,
            crate::events::EventBody::DeployFailed(crate::events::DeployFailed {
                deployment_id: id.to_owned(),
                step: None,
                error: reason.to_owned(),
            }),
        ),
    )
    .await?;
    Ok(())
}

/// A change to one deployment row; `None` fields are left as they are.
#[derive(Debug, Default)]
pub struct Update<'a> {
    pub status: Option<DeploymentStatus>,
    pub steps: Option<&'a [StepEntry]>,
    pub commit_sha: Option<&'a str>,
    pub image_tag: Option<&'a str>,
    pub error: Option<&'a str>,
    pub failed_step: Option<&'a str>,
}

/// Applies `update` after checking the status transition against the row,
/// locked for the rest of the caller's transaction.
pub async fn update(
    conn: &mut PgConnection,
    id: &str,
    update: &Update<'_>,
) -> Result<Deployment, DbError> {
    let current: Option<(String,)> =
        sqlx::query_as("SELECT status FROM deployments WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((current,)) = current else {
        return Err(DbError::DeploymentNotFound(id.to_owned()));
    };
    let current: DeploymentStatus = current.parse().unwrap_or(DeploymentStatus::Failed);
    let next = match update.status {
        Some(to) => current.transition(to)?,
        None => current,
    };
    Ok(sqlx::query_as(concat!(
        "UPDATE deployments SET
            status = $2,
            steps = COALESCE($3, steps),
            commit_sha = COALESCE($4, commit_sha),
            image_tag = COALESCE($5, image_tag),
            error = COALESCE($6, error),
            failed_step = COALESCE($7, failed_step),
            finished_at = CASE WHEN $8 THEN now() ELSE finished_at END
         WHERE id = $1
         RETURNING ",
        columns!(),
        ""
    ))
    .bind(id)
    .bind(next.as_str())
    .bind(update.steps.map(Json))
    .bind(update.commit_sha)
    .bind(update.image_tag)
    .bind(update.error)
    .bind(update.failed_step)
    .bind(next.is_terminal() && !current.is_terminal())
    .fetch_one(conn)
    .await?)
}
