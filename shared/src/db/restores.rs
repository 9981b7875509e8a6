//! `snapshot_restores`: database restores requested through the API.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

/// Where a restore stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RestoreStatus {
    Queued,
    Running,
    Completed,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Restore {
    pub id: String,
    pub app: String,
    pub database_name: String,
    pub snapshot: String,
    pub pre_restore: bool,
    pub pre_restore_file: Option<String>,
    pub status: RestoreStatus,
    pub output: String,
    pub error: Option<String>,
    pub requested_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `GET /api/apps/{id}/snapshots`: the app database's dumps, newest first,
/// and its recent restores.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotList {
    pub database: String,
    /// How many dumps the app keeps (`snapshots.keep`).
    pub keep: u32,
    pub snapshots: Vec<crate::snapshots::SnapshotFile>,
    pub restores: Vec<Restore>,
}

/// `POST …/snapshots/{ts}/restore`: the restore queued.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreQueued {
    pub id: String,
    pub status: RestoreStatus,
    pub snapshot: String,
    pub pre_restore: bool,
}

const COLUMNS: &str = "id, app, database_name, snapshot, pre_restore, pre_restore_file, status, \
                       output, error, requested_by, created_at, finished_at";

pub struct NewRestore<'a> {
    pub id: &'a str,
    pub app: &'a str,
    pub database: &'a str,
    pub snapshot: &'a str,
    pub pre_restore: bool,
    pub requested_by: &'a str,
}

pub async fn insert(conn: &mut PgConnection, r: &NewRestore<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO snapshot_restores (id, app, database_name, snapshot, pre_restore, requested_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(r.id)
    .bind(r.app)
    .bind(r.database)
    .bind(r.snapshot)
    .bind(r.pre_restore)
    .bind(r.requested_by)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<Restore>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM snapshot_restores WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn recent(conn: &mut PgConnection, app: &str) -> Result<Vec<Restore>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM snapshot_restores WHERE app = $1 ORDER BY created_at DESC LIMIT 10"
    )))
    .bind(app)
    .fetch_all(conn)
    .await
}

pub async fn set_running(conn: &mut PgConnection, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE snapshot_restores SET status = 'running' WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records the outcome: `error` `None` is success.
pub async fn finish(
    conn: &mut PgConnection,
    id: &str,
    output: &str,
    pre_restore_file: Option<&str>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE snapshot_restores
         SET status = CASE WHEN $4::text IS NULL THEN 'completed' ELSE 'failed' END,
             output = $2, pre_restore_file = $3, error = $4, finished_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(output)
    .bind(pre_restore_file)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}
