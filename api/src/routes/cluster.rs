//! The fleet's own registry: `GET /api/cluster/nodes`,
//! `POST /api/cluster/nodes/{id}/drain`.

use axum::Json;
use axum::extract::{Path, State};
use norn_shared::db::nodes;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/api/cluster/nodes",
    tag = "cluster",
    summary = "The fleet",
    responses((status = 200, body = Vec<nodes::Node>), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<nodes::Node>>> {
    let mut conn = state.pool.acquire().await?;
    Ok(Json(nodes::list(&mut conn).await?))
}

/// A draining worker claims no new jobs and finishes the ones it holds.
#[utoipa::path(
    post,
    path = "/api/cluster/nodes/{id}/drain",
    tag = "cluster",
    summary = "Drain a node",
    params(("id" = String, Path, description = "node id")),
    responses((status = 200, body = nodes::Node), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn drain(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<nodes::Node>> {
    uuid::Uuid::parse_str(&id).map_err(|_| ApiError::field("id", "node ids are UUIDs"))?;
    let mut conn = state.pool.acquire().await?;
    if !nodes::drain(&mut conn, &id).await? {
        return match nodes::get(&mut conn, &id).await? {
            None => Err(ApiError::NotFound(format!("node {id} not found"))),
            Some(n) => Err(ApiError::Conflict(format!(
                "node {id} is {}; only a ready node can be drained",
                n.status
            ))),
        };
    }
    tracing::info!(node.id = %id, "node asked to drain");
    nodes::get(&mut conn, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("node {id} not found")))
}
