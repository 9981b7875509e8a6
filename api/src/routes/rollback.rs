//! `POST /api/apps/{id}/rollback {deploymentId?}`: queue a deployment that
//! puts an earlier release's image back, with no build and no migration.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use norn_shared::db::deployments::{self, Deployment, RollbackAnswer};
use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::domain::{DeploymentStatus, new_deployment_id};
use norn_shared::events::{self, Event, EventBody};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgConnection;

use super::apps::app_id;
use super::queueing;
use crate::auth::Principal;
use crate::body::{Body, SMALL_LIMIT, optional_json};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RollbackBody {
    deployment_id: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/apps/{id}/rollback",
    tag = "deployments",
    summary = "Put an earlier release back",
    params(("id" = String, Path, description = "app name")),
    request_body(content = RollbackBody, content_type = "application/json"),
    responses((status = 202, body = RollbackAnswer), crate::openapi::Errors),
    security(("bearer" = ["deployer"])),
)]
pub async fn rollback(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
    Body(body): Body<SMALL_LIMIT>,
) -> ApiResult<(StatusCode, Json<RollbackAnswer>)> {
    let app = app_id(&id)?;
    let body: RollbackBody = optional_json(&body)?;
    let actor = by.name.as_str();
    let mut tx = state.pool.begin().await?;
    let registered = queueing::lock_app(&mut tx, app.as_str()).await?;
    let target = target(&mut tx, app.as_str(), body.deployment_id.as_deref()).await?;
    let id = new_deployment_id();
    let queued = deployments::insert_rollback(&mut tx, &id, &target, actor).await?;
    let superseded = queueing::admit_and_enqueue(
        &mut tx,
        &registered,
        &id,
        state.config.max_queued_per_app,
        actor,
    )
    .await?;
    let image = target.image_tag.clone().unwrap_or_default();
    saga::append(
        &mut tx,
        NewSagaEvent {
            saga_id: &id,
            app: app.as_str(),
            category: "deploy",
            action: "rollback.queued",
            step: None,
            message: &format!("back to {} ({image})", target.id),
            actor,
            metadata: json!({"target": target.id, "imageTag": image}),
        },
    )
    .await?;
    events::publish(
        &mut tx,
        &Event::new(app.as_str(), EventBody::DeployQueued(Box::new(queued))),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(app = %app, deployment.id = %id, target = %target.id, "rollback queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(RollbackAnswer {
            id,
            status: DeploymentStatus::Queued,
            kind: norn_shared::domain::DeploymentKind::Rollback,
            target: target.id,
            image_tag: Some(image),
            superseded,
        }),
    ))
}

/// The release to go back to: the one named, or the newest deployed release
/// before the current one.
async fn target(conn: &mut PgConnection, app: &str, named: Option<&str>) -> ApiResult<Deployment> {
    let current = deployments::current(conn, app).await?;
    if let Some(raw) = named {
        uuid::Uuid::parse_str(raw)
            .map_err(|_| ApiError::field("deploymentId", "deployment ids are UUIDs"))?;
        let d = deployments::get(conn, raw)
            .await?
            .filter(|d| d.app == app)
            .ok_or_else(|| {
                ApiError::NotFound(format!("deployment {raw} of app {app} not found"))
            })?;
        let usable = matches!(
            d.status(),
            DeploymentStatus::Deployed | DeploymentStatus::RolledBack
        ) && d.image_tag.is_some();
        if !usable {
            return Err(ApiError::field(
                "deploymentId",
                format!(
                    "deployment {raw} is {} and cannot be rolled back to (it never served)",
                    d.status
                ),
            ));
        }
        if current.as_ref().is_some_and(|c| c.id == d.id) {
            return Err(ApiError::field(
                "deploymentId",
                format!("deployment {raw} is what {app} serves now"),
            ));
        }
        return Ok(d);
    }
    let current = current.ok_or_else(|| {
        ApiError::NotFound(format!(
            "app {app} has no deployed release to roll back from"
        ))
    })?;
    deployments::previous_release(conn, &current)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "app {app} has no deployed release before {} to roll back to",
                current.id
            ))
        })
}
