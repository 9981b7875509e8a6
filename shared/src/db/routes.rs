//! Where each app process is served. The deploy step switches a route in the
//! same transaction that records the switch; the ingress follows it.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

pub const CHANGED_CHANNEL: &str = "norn_routes";

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub app: String,
    pub process: String,
    pub upstream: String,
    pub deployment_id: String,
}

pub async fn set(conn: &mut PgConnection, route: &Route) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO app_routes (app, process, upstream, deployment_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (app, process) DO UPDATE
            SET upstream = excluded.upstream, deployment_id = excluded.deployment_id,
                updated_at = now()",
    )
    .bind(&route.app)
    .bind(&route.process)
    .bind(&route.upstream)
    .bind(&route.deployment_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANGED_CHANNEL)
        .bind(&route.app)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn all(conn: &mut PgConnection) -> Result<Vec<Route>, sqlx::Error> {
    sqlx::query_as("SELECT app, process, upstream, deployment_id FROM app_routes")
        .fetch_all(conn)
        .await
}

pub async fn for_app(conn: &mut PgConnection, app: &str) -> Result<Vec<Route>, sqlx::Error> {
    sqlx::query_as(
        "SELECT app, process, upstream, deployment_id FROM app_routes WHERE app = $1 ORDER BY process",
    )
    .bind(app)
    .fetch_all(conn)
    .await
}

/// Removes every route of `app` (and tells the ingress).
pub async fn remove_app(conn: &mut PgConnection, app: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM app_routes WHERE app = $1")
        .bind(app)
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANGED_CHANNEL)
        .bind(app)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records, in the switch's transaction, the routes `deployment` replaces.
pub async fn record_previous(
    conn: &mut PgConnection,
    deployment: &str,
    previous: &[Route],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE deployments SET previous_routes = $2 WHERE id = $1")
        .bind(deployment)
        .bind(sqlx::types::Json(previous))
        .execute(conn)
        .await?;
    Ok(())
}

/// The routes `deployment` replaced when it switched traffic; `None` if it
/// never switched.
pub async fn previous_of(
    conn: &mut PgConnection,
    deployment: &str,
) -> Result<Option<Vec<Route>>, sqlx::Error> {
    let row: Option<(Option<sqlx::types::Json<Vec<Route>>>,)> =
        sqlx::query_as("SELECT previous_routes FROM deployments WHERE id = $1")
            .bind(deployment)
            .fetch_optional(conn)
            .await?;
    Ok(row.and_then(|(r,)| r).map(|j| j.0))
}

/// Points `route` at `upstream` when it still names the same deployment and
/// upstream it was read with (a switch in between wins), and tells the
/// ingress. `true` when it changed.
pub async fn replace_upstream(
    pool: &sqlx::PgPool,
    route: &Route,
    upstream: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query(
        "UPDATE app_routes SET upstream = $5, updated_at = now()
         WHERE app = $1 AND process = $2 AND deployment_id = $3 AND upstream = $4",
    )
    .bind(&route.app)
    .bind(&route.process)
    .bind(&route.deployment_id)
    .bind(&route.upstream)
    .bind(upstream)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    if updated {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGED_CHANNEL)
            .bind(&route.app)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(updated)
}

/// Every declared hostname and the app it belongs to (`app_hostnames`).
pub async fn hostnames(conn: &mut PgConnection) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT hostname, app FROM app_hostnames")
        .fetch_all(conn)
        .await
}

/// Claims `hostnames` for `app` and drops its others, telling every API
/// replica to reload its routes. Returns a hostname another app holds, with
/// that app; the caller must then roll its transaction back.
pub async fn claim_hostnames(
    conn: &mut PgConnection,
    app: &str,
    hostnames: &[String],
) -> Result<Option<(String, String)>, sqlx::Error> {
    let held_elsewhere = "SELECT hostname, app FROM app_hostnames
                          WHERE hostname = ANY($1) AND app <> $2 ORDER BY hostname LIMIT 1";
    let taken: Option<(String, String)> = sqlx::query_as(held_elsewhere)
        .bind(hostnames)
        .bind(app)
        .fetch_optional(&mut *conn)
        .await?;
    if taken.is_some() {
        return Ok(taken);
    }
    let dropped =
        sqlx::query("DELETE FROM app_hostnames WHERE app = $1 AND NOT (hostname = ANY($2))")
            .bind(app)
            .bind(hostnames)
            .execute(&mut *conn)
            .await?;
    let added = sqlx::query(
        "INSERT INTO app_hostnames (hostname, app) SELECT unnest($1::text[]), $2 ON CONFLICT DO NOTHING",
    )
    .bind(hostnames)
    .bind(app)
    .execute(&mut *conn)
    .await?;
    // A concurrent claim of the same name waits on the primary key and then
    // conflicts: the loser finds the winner here.
    let taken: Option<(String, String)> = sqlx::query_as(held_elsewhere)
        .bind(hostnames)
        .bind(app)
        .fetch_optional(&mut *conn)
        .await?;
    if taken.is_none() && (dropped.rows_affected() > 0 || added.rows_affected() > 0) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGED_CHANNEL)
            .bind(app)
            .execute(&mut *conn)
            .await?;
    }
    Ok(taken)
}
