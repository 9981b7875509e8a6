//! The forge of an app's services: `GET /api/apps/{id}/forge` (state, steps,
//! resources), `POST /api/apps/{id}/forge {force?}` and
//! `POST /api/apps/{id}/teardown?dropData=true&confirm=true`, each queued
//! as a `norn.forge` job that runs under the app lease.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use norn_shared::db::apps;
use norn_shared::db::forge::{self, ForgeQueued, ForgeState};
use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::domain::ForgeStatus;
use norn_shared::jobs::{ForgeAction, ForgeJob};
use norn_shared::queue::{self, Queue};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgConnection;

use super::apps::app_id;
use super::snapshots::flag;
use crate::auth::Principal;
use crate::body::{Body, Query, SMALL_LIMIT, optional_json};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

async fn state_of(conn: &mut PgConnection, id: &str) -> ApiResult<(apps::App, ForgeState)> {
    let id = app_id(id)?;
    let app = apps::get(conn, id.as_str())
        .await
        .map_err(super::apps::invalid_spec)?
        .ok_or_else(|| ApiError::NotFound(format!("app {id} is not registered")))?;
    let state = forge::get(conn, id.as_str()).await.map_err(internal)?;
    Ok((app, state))
}

fn internal(e: forge::ForgeDbError) -> ApiError {
    ApiError::Internal(Box::new(e))
}

#[utoipa::path(
    get,
    path = "/api/apps/{id}/forge",
    tag = "forge",
    summary = "The app services state",
    params(("id" = String, Path, description = "app name")),
    responses((status = 200, body = ForgeState), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ForgeState>> {
    let mut conn = state.pool.acquire().await?;
    let (_, forged) = state_of(&mut conn, &id).await?;
    Ok(Json(forged))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgeBody {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(
    post,
    path = "/api/apps/{id}/forge",
    tag = "forge",
    summary = "Provision the app services",
    params(("id" = String, Path, description = "app name")),
    request_body(content = ForgeBody, content_type = "application/json"),
    responses((status = 202, body = ForgeQueued), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn forge(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
    Body(body): Body<SMALL_LIMIT>,
) -> ApiResult<(StatusCode, Json<ForgeQueued>)> {
    let ForgeBody { force } = optional_json(&body)?;
    let mut tx = state.pool.begin().await?;
    let (app, current) = state_of(&mut tx, &id).await?;
    refuse_busy(&current)?;
    if current.status == ForgeStatus::Forged && !force {
        return Err(ApiError::Conflict(format!(
            "app {} is already forged; send {{\"force\": true}} to tear it down (keeping data) and forge it again",
            app.id
        )));
    }
    let action = ForgeAction::Forge { force };
    queue_job(&by, tx, &app.id, action).await
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct TeardownQuery {
    drop_data: Option<String>,
    confirm: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/apps/{id}/teardown",
    tag = "forge",
    summary = "Reverse the forge",
    params(("id" = String, Path, description = "app name"), TeardownQuery),
    responses((status = 202, body = ForgeQueued), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn teardown(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<TeardownQuery>,
) -> ApiResult<(StatusCode, Json<ForgeQueued>)> {
    let drop_data = flag(q.drop_data.as_deref(), "dropData")?;
    if drop_data && !flag(q.confirm.as_deref(), "confirm")? {
        return Err(ApiError::field(
            "confirm",
            "dropData deletes the app's databases; repeat with &confirm=true",
        ));
    }
    let mut tx = state.pool.begin().await?;
    let (app, current) = state_of(&mut tx, &id).await?;
    refuse_busy(&current)?;
    if current.status == ForgeStatus::Unforged {
        return Err(ApiError::Conflict(format!(
            "app {} is not forged; nothing to tear down",
            app.id
        )));
    }
    let action = ForgeAction::Teardown { drop_data };
    queue_job(&by, tx, &app.id, action).await
}

fn refuse_busy(current: &ForgeState) -> ApiResult<()> {
    if current.status.is_busy() {
        return Err(ApiError::Conflict(format!(
            "app {} is {}; wait for it to finish",
            current.app, current.status
        )));
    }
    Ok(())
}

async fn queue_job(
    by: &Principal,
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    app: &str,
    action: ForgeAction,
) -> ApiResult<(StatusCode, Json<ForgeQueued>)> {
    let id = uuid::Uuid::now_v7().to_string();
    let job = ForgeJob {
        id: id.clone(),
        app: app.to_owned(),
        action,
    };
    queue::enqueue(&mut tx, Queue::Forge, &job, Some(&id)).await?;
    let actor = by.name.as_str();
    saga::append(
        &mut tx,
        NewSagaEvent {
            saga_id: &format!("forge:{app}"),
            app,
            category: "forge",
            action: "forge.queued",
            step: None,
            message: &id,
            actor,
            metadata: json!({"action": action}),
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(app = %app, job.id = %id, action = ?action, "forge queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(ForgeQueued {
            id,
            app: app.to_owned(),
            action,
        }),
    ))
}
