//! `GET /api/apps/{id}/snapshots`: the app database's pre-migration dumps.
//! The API reads `NORN_SNAPSHOTS_DIR`, so api and workers must share it
//! (one host, or a shared volume).

use axum::Json;
use axum::extract::{Path, State};
use norn_shared::db::apps;
use serde_json::{Value, json};

use super::apps::app_id;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub async fn list(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let app = app_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    let registered = apps::get(&mut conn, app.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("app {app} is not registered")))?;
    let Some(pg) = &registered.spec.services.postgres else {
        return Err(ApiError::NotFound(format!(
            "app {app} declares no services.postgres.database, so it has no snapshots"
        )));
    };
    let dir = state.config.snapshots_dir.clone();
    let database = pg.database.clone();
    let list = tokio::task::spawn_blocking(move || norn_shared::snapshots::list(&dir, &database))
        .await??;
    Ok(Json(json!({
        "database": pg.database,
        "keep": registered.spec.snapshots.keep,
        "snapshots": list,
    })))
}
