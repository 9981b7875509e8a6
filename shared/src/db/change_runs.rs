//! `change_runs`: what the change runner did to an app's database, from a
//! deploy's migrate step or a run requested through the API, with the merged
//! status of every change afterwards (the API answers from the newest).

use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use crate::changes::{ChangeRun, ChangeStatus};

/// What a change run does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ChangeAction {
    /// A deploy's migrate step applied the folder.
    Deploy,
    /// Read the status of every change (writes nothing to the app database).
    Status,
    /// Apply every pending change.
    Run,
    /// What `run` would do, with the SQL; writes nothing to the app database.
    DryRun,
    /// Revert one change.
    Revert,
    /// Revert the newest `count` applied changes.
    Rewind,
}

impl ChangeAction {
    /// Whether it changes the app database (and so takes the app lease).
    pub fn writes(self) -> bool {
        matches!(self, Self::Deploy | Self::Run | Self::Revert | Self::Rewind)
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ChangeRunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl ChangeRunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// One change run, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRunRecord {
    pub id: String,
    pub app: String,
    pub action: ChangeAction,
    /// Revert: the change. Rewind: the changes it chose to revert, newest
    /// first (chosen once, so a resumed run reverts no more than asked).
    #[schema(value_type = Option<Vec<String>>)]
    pub targets: Option<Json<Vec<String>>>,
    /// Rewind: how many changes.
    pub count: Option<i32>,
    /// Run: drifted changes run again instead of refusing.
    pub force: bool,
    /// A deploy's migrate step: its deployment.
    pub deployment_id: Option<String>,
    /// The commit whose folder was read.
    pub commit_sha: Option<String>,
    pub status: ChangeRunStatus,
    /// Workers that took it on; more than one means it was resumed.
    pub attempts: i32,
    /// Every change's status once the run ended (absent in lists).
    #[schema(value_type = Option<Vec<ChangeStatus>>)]
    pub changes: Option<Json<Vec<ChangeStatus>>>,
    /// What ran: each change and file with status and duration (absent in
    /// lists).
    #[schema(value_type = Option<Vec<ChangeRun>>)]
    pub runs: Option<Json<Vec<ChangeRun>>>,
    pub error: Option<String>,
    pub requested_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

const COLUMNS: &str = "id, app, action, targets, count, force, deployment_id, commit_sha, status, \
                       attempts, changes, runs, error, requested_by, created_at, started_at, \
                       finished_at";

/// How many runs of one app may wait or run at once.
pub const MAX_OPEN_PER_APP: i64 = 5;
/// Finished runs are kept this long (each app's newest status always).
pub const RETENTION_DAYS: i32 = 90;

pub struct NewChangeRun<'a> {
    pub id: &'a str,
    pub app: &'a str,
    pub action: ChangeAction,
    pub targets: Option<Vec<String>>,
    pub count: Option<i32>,
    pub force: bool,
    pub commit_sha: &'a str,
    pub requested_by: &'a str,
}

pub async fn insert_queued(
    conn: &mut PgConnection,
    r: &NewChangeRun<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO change_runs (id, app, action, targets, count, force, commit_sha, requested_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(r.id)
    .bind(r.app)
    .bind(r.action)
    .bind(r.targets.clone().map(Json))
    .bind(r.count)
    .bind(r.force)
    .bind(r.commit_sha)
    .bind(r.requested_by)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a deploy's migrate step did, recorded when it ended.
pub struct DeployRun<'a> {
    pub app: &'a str,
    pub deployment_id: &'a str,
    pub commit_sha: Option<&'a str>,
    pub holder: &'a str,
    pub changes: Option<&'a [ChangeStatus]>,
    pub runs: &'a [ChangeRun],
    pub error: Option<&'a str>,
}

pub async fn insert_deploy(pool: &PgPool, r: &DeployRun<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO change_runs (id, app, action, deployment_id, commit_sha, status, attempts,
                                  changes, runs, error, requested_by, started_at, finished_at)
         VALUES ($1, $2, 'deploy', $3, $4,
                 CASE WHEN $8::text IS NULL THEN 'succeeded' ELSE 'failed' END, 1,
                 $5, $6, $8, $7, now(), now())",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(r.app)
    .bind(r.deployment_id)
    .bind(r.commit_sha)
    .bind(r.changes.map(Json))
    .bind(Json(r.runs))
    .bind(r.holder)
    .bind(r.error)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn get(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<ChangeRunRecord>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM change_runs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// The app's newest runs, without their (possibly long) status lists and
/// reports (a dry run's holds the SQL).
pub async fn recent(
    conn: &mut PgConnection,
    app: &str,
    limit: i64,
) -> Result<Vec<ChangeRunRecord>, sqlx::Error> {
    let rows: Vec<ChangeRunRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM change_runs WHERE app = $1 ORDER BY created_at DESC LIMIT $2"
    )))
    .bind(app)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ChangeRunRecord {
            changes: None,
            runs: None,
            ..r
        })
        .collect())
}

/// The newest run that read every change's status.
pub async fn latest_status(
    conn: &mut PgConnection,
    app: &str,
) -> Result<Option<ChangeRunRecord>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM change_runs WHERE app = $1 AND changes IS NOT NULL
         ORDER BY finished_at DESC LIMIT 1"
    )))
    .bind(app)
    .fetch_optional(conn)
    .await
}

/// Runs of the app queued or running, queued within the hour (a run whose
/// worker gave up never blocks new ones for long).
pub async fn open(conn: &mut PgConnection, app: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM change_runs WHERE app = $1 AND status IN ('queued', 'running')
           AND created_at > now() - interval '1 hour'",
    )
    .bind(app)
    .fetch_one(conn)
    .await
}

/// Marks it running, counts the attempt and moves it to the commit deployed
/// now (`commit`, when there is one: a deploy may have finished since it was
/// queued). Returns the attempts so far and the commit to read.
/// `None` when it has already finished.
pub async fn start(
    conn: &mut PgConnection,
    id: &str,
    commit: Option<&str>,
) -> Result<Option<(i32, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE change_runs SET status = 'running', attempts = attempts + 1,
                started_at = coalesce(started_at, now()),
                commit_sha = coalesce($2, commit_sha)
         WHERE id = $1 AND status IN ('queued', 'running') RETURNING attempts, commit_sha",
    )
    .bind(id)
    .bind(commit)
    .fetch_optional(conn)
    .await
}

/// Records the changes a rewind chose, unless an attempt already did;
/// returns the recorded ones.
pub async fn set_targets(
    conn: &mut PgConnection,
    id: &str,
    targets: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let recorded: Option<Json<Vec<String>>> = sqlx::query_scalar(
        "UPDATE change_runs SET targets = coalesce(targets, $2) WHERE id = $1 RETURNING targets",
    )
    .bind(id)
    .bind(Json(targets))
    .fetch_one(conn)
    .await?;
    Ok(recorded.map(|t| t.0).unwrap_or_default())
}

/// Records the end: `error` `None` is success.
pub async fn finish(
    conn: &mut PgConnection,
    id: &str,
    changes: Option<&[ChangeStatus]>,
    runs: &[ChangeRun],
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE change_runs
         SET status = CASE WHEN $4::text IS NULL THEN 'succeeded' ELSE 'failed' END,
             changes = $2, runs = $3, error = $4, finished_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(changes.map(Json))
    .bind(Json(runs))
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes finished runs past [`RETENTION_DAYS`], keeping each registered
/// app's newest status, and every finished run of an app that is gone (a
/// closed preview's, say).
pub async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM change_runs r
         WHERE r.finished_at IS NOT NULL
           AND (NOT EXISTS (SELECT 1 FROM apps a WHERE a.id = r.app)
                OR (r.finished_at < now() - make_interval(days => $1)
                    AND r.id <> coalesce((SELECT n.id FROM change_runs n
                                           WHERE n.app = r.app AND n.changes IS NOT NULL
                                           ORDER BY n.finished_at DESC LIMIT 1), '')))",
    )
    .bind(RETENTION_DAYS)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
