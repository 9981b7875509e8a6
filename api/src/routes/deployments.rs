use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use norn_shared::db::deployments::{
    self, CancelAnswer, CancelStatus, DeployAnswer, Deployment, ListFilter,
};
use norn_shared::db::saga::{self, NewSagaEvent, SagaEvent};
use norn_shared::domain::{DeploymentStatus, GitRef};
use serde::Deserialize;
use serde_json::json;

use super::apps::app_id;
use super::queueing;
use crate::auth::Principal;
use crate::body::{Body, Query, SMALL_LIMIT, list_limit, optional_json};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
}

/// Records a `queued` deployment and pushes its job in one transaction.
#[utoipa::path(
    post,
    path = "/api/apps/{id}/deploy",
    tag = "deployments",
    summary = "Queue a deploy",
    params(("id" = String, Path, description = "app name"), ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key returns the first deployment")),
    request_body(content = DeployBody, content_type = "application/json"),
    responses(
        (status = 202, body = DeployAnswer, description = "queued"),
        (status = 200, body = DeployAnswer, description = "the idempotency key named an earlier deployment"),
        crate::openapi::Errors,
    ),
    security(("bearer" = ["deployer"])),
)]
pub async fn deploy(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<SMALL_LIMIT>,
) -> ApiResult<(StatusCode, Json<DeployAnswer>)> {
    let app = app_id(&id)?;
    let body: DeployBody = optional_json(&body)?;
    let git_ref = GitRef::parse(body.git_ref.as_deref().unwrap_or("HEAD"))
        .map_err(|e| ApiError::field("ref", e))?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 200)
                .ok_or_else(|| {
                    ApiError::field("Idempotency-Key", "must be 1..200 visible ASCII characters")
                })?,
        ),
    };
    let actor = by.name.as_str();

    let mut tx = state.pool.begin().await?;
    let registered = queueing::lock_app(&mut tx, app.as_str()).await?;
    let queued = queueing::queue_deploy(
        &mut tx,
        &registered,
        &queueing::DeployRequest {
            git_ref: &git_ref,
            idempotency_key: key,
            actor,
            max_queued: state.config.max_queued_per_app,
            metadata: json!({"ref": git_ref}),
        },
    )
    .await?;
    if !queued.created {
        tx.rollback().await?;
        return Ok((
            StatusCode::OK,
            Json(DeployAnswer {
                id: queued.id,
                status: queued.status,
                superseded: Vec::new(),
                duplicate: true,
            }),
        ));
    }
    tx.commit().await?;
    tracing::info!(app = %app, deployment.id = %queued.id, r#ref = %git_ref, superseded = queued.superseded.len(), "deploy queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(DeployAnswer {
            id: queued.id,
            status: DeploymentStatus::Queued,
            superseded: queued.superseded,
            duplicate: false,
        }),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    app: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/deployments",
    tag = "deployments",
    summary = "Recent deployments",
    params(ListQuery),
    responses((status = 200, body = Vec<Deployment>), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Deployment>>> {
    let app = q.app.as_deref().map(app_id).transpose()?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<DeploymentStatus>)
        .transpose()
        .map_err(|e| ApiError::field("status", e))?;
    let limit = list_limit(q.limit)?;
    let mut conn = state.pool.acquire().await?;
    let list = deployments::list(
        &mut conn,
        &ListFilter {
            app: app.as_ref().map(|a| a.as_str()),
            status,
            limit,
        },
    )
    .await?;
    Ok(Json(list))
}

pub(crate) fn deployment_id(raw: &str) -> ApiResult<&str> {
    uuid::Uuid::parse_str(raw)
        .map(|_| raw)
        .map_err(|_| ApiError::field("id", "deployment ids are UUIDs"))
}

#[utoipa::path(
    get,
    path = "/api/deployments/{id}",
    tag = "deployments",
    summary = "One deployment",
    params(("id" = String, Path, description = "deployment id (UUID)")),
    responses((status = 200, body = Deployment), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Deployment>> {
    let id = deployment_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    let d = deployments::get(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("deployment {id} not found")))?;
    Ok(Json(d))
}

#[utoipa::path(
    get,
    path = "/api/deployments/{id}/events",
    tag = "deployments",
    summary = "Its saga events",
    params(("id" = String, Path, description = "deployment id (UUID)")),
    responses((status = 200, body = Vec<SagaEvent>), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<SagaEvent>>> {
    let id = deployment_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    if deployments::get(&mut conn, id).await?.is_none() {
        return Err(ApiError::NotFound(format!("deployment {id} not found")));
    }
    Ok(Json(saga::for_saga(&mut conn, id).await?))
}

/// A deployment no worker has taken on ends at once; a running one is asked
/// to stop (its worker kills the current step within seconds, cleans up and
/// releases the app). Terminal deployments give 409.
#[utoipa::path(
    post,
    path = "/api/deployments/{id}/cancel",
    tag = "deployments",
    summary = "Cancel a deployment",
    params(("id" = String, Path, description = "deployment id (UUID)")),
    responses(
        (status = 200, body = CancelAnswer, description = "it had not started: ended `failed`"),
        (status = 202, body = CancelAnswer, description = "its worker is stopping it (`canceling`)"),
        crate::openapi::Errors,
    ),
    security(("bearer" = ["deployer"])),
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<CancelAnswer>)> {
    let id = deployment_id(&id)?;
    let actor = by.name.as_str();
    let mut tx = state.pool.begin().await?;
    let d = deployments::lock(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("deployment {id} not found")))?;
    let status = d.status();
    if status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "deployment {id} already ended ({status})"
        )));
    }
    let reply = if status == DeploymentStatus::Queued && d.attempts == 0 {
        let reason = format!("canceled by {actor}");
        queueing::end_waiting(&mut tx, &d.app, id, &reason, "deploy.canceled", actor).await?;
        (
            StatusCode::OK,
            CancelAnswer {
                id: id.to_owned(),
                status: CancelStatus::Failed,
                error: Some(reason),
            },
        )
    } else {
        deployments::request_cancel(&mut tx, id, actor).await?;
        saga::append(
            &mut tx,
            NewSagaEvent {
                saga_id: id,
                app: &d.app,
                category: "deploy",
                action: "deploy.cancel_requested",
                step: None,
                message: "",
                actor,
                metadata: json!({}),
            },
        )
        .await?;
        (
            StatusCode::ACCEPTED,
            CancelAnswer {
                id: id.to_owned(),
                status: CancelStatus::Canceling,
                error: None,
            },
        )
    };
    tx.commit().await?;
    tracing::info!(deployment.id = %id, app = %d.app, "deploy cancel requested");
    Ok((reply.0, Json(reply.1)))
}
