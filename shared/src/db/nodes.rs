//! `cluster_nodes`: every Norn process (api, worker, scheduler) registers
//! itself at start and keeps a heartbeat. A node whose heartbeat stopped is
//! shown as lost; its deploys are resumed elsewhere once their leases expire.

use std::time::Duration;

use serde::Serialize;
use sqlx::{PgConnection, PgPool};

/// How often a process writes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A node silent for this long is shown as lost.
pub const LOST_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, serde::Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub id: String,
    pub name: String,
    pub role: String,
    pub host: Option<String>,
    pub pid: Option<i32>,
    /// `ready`, `draining`, `removed`, or `lost` (heartbeat older than [`LOST_AFTER`]).
    pub status: String,
    pub running_jobs: i32,
    pub last_heartbeat_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

pub struct NewNode<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub role: &'a str,
    pub host: &'a str,
    pub pid: i32,
}

/// Registers the node `ready`, with its engine's state (see [`heartbeat`]).
pub async fn register(
    pool: &PgPool,
    n: &NewNode<'_>,
    engine: Option<Result<(), String>>,
) -> Result<(), sqlx::Error> {
    let (engine_ok, engine_error) = engine_columns(engine);
    sqlx::query(
        "INSERT INTO cluster_nodes (id, name, role, host, pid, status, last_heartbeat_at,
                                   engine_ok, engine_error)
         VALUES ($1, $2, $3, $4, $5, 'ready', now(), $6, $7)
         ON CONFLICT (id) DO UPDATE SET status = 'ready', last_heartbeat_at = now(),
             updated_at = now(), engine_ok = $6, engine_error = $7",
    )
    .bind(n.id)
    .bind(n.name)
    .bind(n.role)
    .bind(n.host)
    .bind(n.pid)
    .bind(engine_ok)
    .bind(engine_error)
    .execute(pool)
    .await?;
    Ok(())
}

fn engine_columns(engine: Option<Result<(), String>>) -> (Option<bool>, Option<String>) {
    match engine {
        None => (None, None),
        Some(Ok(())) => (Some(true), None),
        Some(Err(e)) => (Some(false), Some(e)),
    }
}

/// Writes a heartbeat; returns the node's status (`draining` tells a worker
/// to stop claiming), or `None` if its row is gone.
/// `engine` is the container engine's state as this node sees it (`None`
/// for roles that use no engine).
pub async fn heartbeat(
    pool: &PgPool,
    id: &str,
    running_jobs: i32,
    engine: Option<Result<(), String>>,
) -> Result<Option<String>, sqlx::Error> {
    let (engine_ok, engine_error) = engine_columns(engine);
    let row: Option<(String,)> = sqlx::query_as(
        "UPDATE cluster_nodes SET last_heartbeat_at = now(), running_jobs = $2, updated_at = now(),
                                  engine_ok = $3, engine_error = $4
         WHERE id = $1 RETURNING status",
    )
    .bind(id)
    .bind(running_jobs)
    .bind(engine_ok)
    .bind(engine_error)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(s,)| s))
}

pub async fn mark_removed(pool: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE cluster_nodes SET status = 'removed', running_jobs = 0, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

macro_rules! select_nodes {
    ($filter:literal) => {
        concat!(
            "SELECT id, name, role, host, pid,
                    CASE WHEN status IN ('ready', 'draining')
                              AND last_heartbeat_at < now() - make_interval(secs => $1)
                         THEN 'lost' ELSE status END AS status,
                    running_jobs, last_heartbeat_at, created_at
             FROM cluster_nodes ",
            $filter
        )
    };
}

/// Live and lost nodes, and nodes removed within the last hour; newest first.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<Node>, sqlx::Error> {
    sqlx::query_as(select_nodes!(
        "WHERE status <> 'removed' OR updated_at > now() - interval '1 hour'
         ORDER BY role, created_at DESC"
    ))
    .bind(LOST_AFTER.as_secs_f64())
    .fetch_all(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<Node>, sqlx::Error> {
    sqlx::query_as(select_nodes!("WHERE id = $2"))
        .bind(LOST_AFTER.as_secs_f64())
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Asks a ready node to drain. `false` if it is not ready (draining already,
/// removed or unknown).
pub async fn drain(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE cluster_nodes SET status = 'draining', updated_at = now()
         WHERE id = $1 AND status = 'ready'",
    )
    .bind(id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// What live workers last reported of their container engine: (node name,
/// ok, error). Empty when no worker is live.
pub async fn engine_states(
    pool: &PgPool,
) -> Result<Vec<(String, bool, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, engine_ok, engine_error FROM cluster_nodes
         WHERE role = 'worker' AND status IN ('ready', 'draining') AND engine_ok IS NOT NULL
           AND last_heartbeat_at > now() - make_interval(secs => $1)
         ORDER BY name",
    )
    .bind(LOST_AFTER.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Of `ids`, the nodes of this fleet that are gone: removed, or silent for
/// [`LOST_AFTER`]. An id this database never saw is another installation's
/// (sharing the engine) and is never called gone.
pub async fn gone_among(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM cluster_nodes
         WHERE id = ANY($1)
           AND (status NOT IN ('ready', 'draining')
                OR last_heartbeat_at <= now() - make_interval(secs => $2))",
    )
    .bind(ids)
    .bind(LOST_AFTER.as_secs_f64())
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
