//! Health-check results: one row per probe, kept 24 hours.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

/// Rows older than this are pruned; the API serves ranges up to it.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Rows per prune statement: each is a short transaction, so inserts never
/// wait behind one and vacuum can follow. Measured by `health-prune-bench`.
pub const PRUNE_BATCH: i64 = 5000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub id: String,
    pub app: String,
    pub healthy: bool,
    pub response_ms: Option<i32>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub checked_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub checks: i64,
    pub healthy: i64,
    /// Percentage of healthy checks; `None` without checks.
    pub uptime_percent: Option<f64>,
    pub mean_response_ms: Option<f64>,
}

/// `GET /api/apps/{id}/health-checks`: a summary of the range and its checks.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub app: String,
    pub range_seconds: u64,
    #[serde(flatten)]
    pub summary: Summary,
    /// Newest first, at most 5,000.
    pub items: Vec<Check>,
}

pub struct NewCheck<'a> {
    pub app: &'a str,
    pub healthy: bool,
    pub response_ms: Option<i32>,
    pub status_code: Option<i32>,
    pub error: Option<&'a str>,
}

pub async fn insert(conn: &mut PgConnection, c: &NewCheck<'_>) -> Result<Check, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO health_checks (id, app, healthy, response_ms, status_code, error)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, app, healthy, response_ms, status_code, error, checked_at",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(c.app)
    .bind(c.healthy)
    .bind(c.response_ms)
    .bind(c.status_code)
    .bind(c.error)
    .fetch_one(conn)
    .await
}

/// Checks of `app` within the last `range`, newest first.
pub async fn recent(
    conn: &mut PgConnection,
    app: &str,
    range: Duration,
    limit: i64,
) -> Result<Vec<Check>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, app, healthy, response_ms, status_code, error, checked_at FROM health_checks
         WHERE app = $1 AND checked_at > now() - make_interval(secs => $2)
         ORDER BY checked_at DESC LIMIT $3",
    )
    .bind(app)
    .bind(range.as_secs_f64())
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn summary(
    conn: &mut PgConnection,
    app: &str,
    range: Duration,
) -> Result<Summary, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) AS checks,
                count(*) FILTER (WHERE healthy) AS healthy,
                (100.0 * count(*) FILTER (WHERE healthy) / NULLIF(count(*), 0))::float8 AS uptime_percent,
                avg(response_ms)::float8 AS mean_response_ms
         FROM health_checks
         WHERE app = $1 AND checked_at > now() - make_interval(secs => $2)",
    )
    .bind(app)
    .bind(range.as_secs_f64())
    .fetch_one(conn)
    .await
}

/// Deletes rows older than [`RETENTION`] in batches of `batch`, each its own
/// short statement, so no transaction stays open for the whole prune and
/// vacuum can follow it. Each batch takes the oldest rows by the time index,
/// starting where the previous batch stopped, and deletes them by `ctid`
/// (by primary key it was 5× slower at 10 million rows: one random lookup in
/// the UUID index per row; see `bench/results/2026-11-22-health-prune.md`).
/// Returns rows deleted.
pub async fn prune(pool: &PgPool, batch: i64) -> Result<u64, sqlx::Error> {
    let (cutoff,): (DateTime<Utc>,) = sqlx::query_as("SELECT now() - make_interval(secs => $1)")
        .bind(RETENTION.as_secs_f64())
        .fetch_one(pool)
        .await?;
    let mut from: Option<DateTime<Utc>> = None;
    let mut total = 0;
    loop {
        let (n, last): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
            "WITH gone AS (
                DELETE FROM health_checks WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM health_checks
                    WHERE checked_at < $1 AND ($2::timestamptz IS NULL OR checked_at >= $2)
                    ORDER BY checked_at LIMIT $3))
                RETURNING checked_at)
             SELECT count(*), max(checked_at) FROM gone",
        )
        .bind(cutoff)
        .bind(from)
        .bind(batch)
        .fetch_one(pool)
        .await?;
        total += n as u64;
        if n < batch {
            return Ok(total);
        }
        from = last;
    }
}
