//! Preview environments (`previews`): which app is the preview of which
//! pull request of which parent, and whether it is being torn down.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum PreviewStatus {
    Active,
    TearingDown,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The preview's own app (`<parent>-pr-<number>`).
    pub app: String,
    pub parent: String,
    pub number: i64,
    pub head_sha: String,
    pub head_branch: String,
    pub status: PreviewStatus,
    /// Why it is being torn down.
    pub reason: Option<String>,
    pub ttl_secs: i64,
    pub opened_by: String,
    pub created_at: DateTime<Utc>,
    /// The last commit pushed to it; idle `ttl_secs` past this, it goes.
    pub updated_at: DateTime<Utc>,
}

macro_rules! columns {
    () => {
        "app, parent, number, head_sha, head_branch, status, reason, ttl_secs, opened_by, \
         created_at, updated_at"
    };
}

pub struct NewPreview<'a> {
    pub app: &'a str,
    pub parent: &'a str,
    pub number: i64,
    pub head_sha: &'a str,
    pub head_branch: &'a str,
    pub ttl_secs: i64,
    pub opened_by: &'a str,
}

/// Records a preview, or moves an active one to a new head. `None` when it
/// is being torn down (a push then must wait until it is gone).
pub async fn upsert(
    conn: &mut PgConnection,
    p: &NewPreview<'_>,
) -> Result<Option<Preview>, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO previews (app, parent, number, head_sha, head_branch, status, ttl_secs, opened_by)
         VALUES ($1, $2, $3, $4, $5, 'active', $6, $7)
         ON CONFLICT (app) DO UPDATE SET head_sha = excluded.head_sha,
             head_branch = excluded.head_branch, ttl_secs = excluded.ttl_secs, updated_at = now()
         WHERE previews.status = 'active'
         RETURNING ",
        columns!()
    ))
    .bind(p.app)
    .bind(p.parent)
    .bind(p.number)
    .bind(p.head_sha)
    .bind(p.head_branch)
    .bind(p.ttl_secs)
    .bind(p.opened_by)
    .fetch_optional(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, app: &str) -> Result<Option<Preview>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM previews WHERE app = $1"
    ))
    .bind(app)
    .fetch_optional(conn)
    .await
}

/// The previews of `parent`, newest activity first.
pub async fn of_parent(conn: &mut PgConnection, parent: &str) -> Result<Vec<Preview>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM previews WHERE parent = $1 ORDER BY updated_at DESC, app"
    ))
    .bind(parent)
    .fetch_all(conn)
    .await
}

/// The parent of `app` when it is a preview.
pub async fn parent_of(conn: &mut PgConnection, app: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT parent FROM previews WHERE app = $1")
        .bind(app)
        .fetch_optional(conn)
        .await
}

/// Active previews of `parent` beyond the `max` most recently active.
pub async fn beyond(
    conn: &mut PgConnection,
    parent: &str,
    max: u32,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT app FROM previews WHERE parent = $1 AND status = 'active'
         ORDER BY updated_at DESC, app OFFSET $2",
    )
    .bind(parent)
    .bind(i64::from(max))
    .fetch_all(conn)
    .await
}

/// Active previews idle past their TTL.
pub async fn expired(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT app FROM previews
         WHERE status = 'active' AND updated_at < now() - make_interval(secs => ttl_secs)
         ORDER BY updated_at LIMIT 100",
    )
    .fetch_all(conn)
    .await
}

/// Marks an active preview as being torn down; `false` when it was not active.
pub async fn start_teardown(
    conn: &mut PgConnection,
    app: &str,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE previews SET status = 'tearing_down', reason = $2
         WHERE app = $1 AND status = 'active'",
    )
    .bind(app)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes the preview's row; the last write of its teardown.
pub async fn remove(conn: &mut PgConnection, app: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM previews WHERE app = $1")
        .bind(app)
        .execute(conn)
        .await?;
    Ok(())
}
