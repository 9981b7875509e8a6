//! `GET /api/apps/{id}/snapshots`: the app database's dumps and recent
//! restores; `POST /api/apps/{id}/snapshots/{ts}/restore?confirm=true`.
//! The API reads `NORN_SNAPSHOTS_DIR`, so api and workers must share it
//! (one host, or a shared volume).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use norn_shared::db::apps::{self, App};
use norn_shared::db::restores::{self, NewRestore, RestoreQueued, RestoreStatus, SnapshotList};
use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::jobs::RestoreJob;
use norn_shared::queue::{self, Queue};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgConnection;

use super::apps::app_id;
use crate::auth::Principal;
use crate::body::Query;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

async fn database_of(conn: &mut PgConnection, id: &str) -> ApiResult<(App, String)> {
    let app = app_id(id)?;
    let registered = apps::get(conn, app.as_str())
        .await
        .map_err(super::apps::invalid_spec)?
        .ok_or_else(|| ApiError::NotFound(format!("app {app} is not registered")))?;
    let database = registered
        .spec
        .services
        .postgres
        .as_ref()
        .map(|pg| pg.database.clone())
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "app {app} declares no services.postgres.database, so it has no snapshots"
            ))
        })?;
    Ok((registered, database))
}

#[utoipa::path(
    get,
    path = "/api/apps/{id}/snapshots",
    tag = "snapshots",
    summary = "Snapshots and recent restores",
    params(("id" = String, Path, description = "app name")),
    responses((status = 200, body = SnapshotList), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<SnapshotList>> {
    let mut conn = state.pool.acquire().await?;
    let (app, database) = database_of(&mut conn, &id).await?;
    let dir = state.config.snapshots_dir.clone();
    let db = database.clone();
    let list =
        tokio::task::spawn_blocking(move || norn_shared::snapshots::list(&dir, &db)).await??;
    Ok(Json(SnapshotList {
        database,
        keep: app.spec.snapshots.keep,
        snapshots: list,
        restores: restores::recent(&mut conn, &app.id).await?,
    }))
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct RestoreQuery {
    confirm: Option<String>,
    pre_restore: Option<String>,
}

/// `true`/`false`, read leniently enough for a query string; anything else is 400.
pub(crate) fn flag(value: Option<&str>, field: &str) -> ApiResult<bool> {
    match value {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::field(
            field,
            format!("{other:?} is not true or false"),
        )),
    }
}

/// Queues a restore of the snapshot taken at `ts` (`YYYYMMDDTHHMMSS`). It
/// replaces the database's contents, so it needs `confirm=true`;
/// `preRestore=true` dumps the current state first.
#[utoipa::path(
    post,
    path = "/api/apps/{id}/snapshots/{ts}/restore",
    tag = "snapshots",
    summary = "Restore a snapshot",
    params(("id" = String, Path, description = "app name"), ("ts" = String, Path, description = "snapshot time, YYYYMMDDTHHMMSS"), RestoreQuery),
    responses((status = 202, body = RestoreQueued), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn restore(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path((id, ts)): Path<(String, String)>,
    Query(q): Query<RestoreQuery>,
) -> ApiResult<(StatusCode, Json<RestoreQueued>)> {
    let mut tx = state.pool.begin().await?;
    let (app, database) = database_of(&mut tx, &id).await?;
    let pre_restore = flag(q.pre_restore.as_deref(), "preRestore")?;
    if !flag(q.confirm.as_deref(), "confirm")? {
        return Err(ApiError::field(
            "confirm",
            format!("restoring replaces everything in {database}; repeat with ?confirm=true"),
        ));
    }
    let dir = state.config.snapshots_dir.clone();
    let (db, stamp) = (database.clone(), ts.clone());
    let file = tokio::task::spawn_blocking(move || norn_shared::snapshots::find(&dir, &db, &stamp))
        .await??
        .ok_or_else(|| ApiError::NotFound(format!("no snapshot of {database} taken at {ts}")))?;
    let snapshot = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let restore_id = uuid::Uuid::now_v7().to_string();
    let actor = by.name.as_str();
    restores::insert(
        &mut tx,
        &NewRestore {
            id: &restore_id,
            app: &app.id,
            database: &database,
            snapshot: &snapshot,
            pre_restore,
            requested_by: actor,
        },
    )
    .await?;
    let job = RestoreJob {
        restore_id: restore_id.clone(),
        app: app.id.clone(),
    };
    queue::enqueue(&mut tx, Queue::Snapshot, &job, Some(&restore_id)).await?;
    saga::append(
        &mut tx,
        NewSagaEvent {
            saga_id: &restore_id,
            app: &app.id,
            category: "snapshot",
            action: "restore.queued",
            step: None,
            message: &snapshot,
            actor,
            metadata: json!({"preRestore": pre_restore}),
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(app = %app.id, snapshot = %snapshot, restore.id = %restore_id, "restore queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(RestoreQueued {
            id: restore_id,
            status: RestoreStatus::Queued,
            snapshot,
            pre_restore,
        }),
    ))
}
