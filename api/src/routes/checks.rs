//! `GET /api/apps/{id}/health-checks?range=1h`: the scheduler's periodic
//! probes of a deployed app, with uptime and mean response time.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use norn_shared::db::health::CheckReport;
use norn_shared::db::{apps, health};
use norn_shared::domain::parse_duration;
use serde::Deserialize;

use super::apps::app_id;
use crate::body::Query;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    range: Option<String>,
}

fn range(raw: Option<&str>) -> ApiResult<Duration> {
    let Some(raw) = raw else {
        return Ok(Duration::from_secs(3600));
    };
    let d = parse_duration(raw).map_err(|e| ApiError::field("range", e))?;
    if d.is_zero() || d > health::RETENTION {
        return Err(ApiError::field(
            "range",
            "must be greater than 0 and at most 24h",
        ));
    }
    Ok(d)
}

#[utoipa::path(
    get,
    path = "/api/apps/{id}/health-checks",
    tag = "health",
    summary = "Periodic health probes",
    params(("id" = String, Path, description = "app name"), RangeQuery),
    responses((status = 200, body = CheckReport), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<CheckReport>> {
    let id = app_id(&id)?;
    let range = range(q.range.as_deref())?;
    let mut conn = state.pool.acquire().await?;
    if apps::get(&mut conn, id.as_str())
        .await
        .map_err(super::apps::invalid_spec)?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("app {id} not found")));
    }
    let summary = health::summary(&mut conn, id.as_str(), range).await?;
    // 24 h at one check per 30 s is 2,880 rows; the cap only bites on tiny intervals.
    let checks = health::recent(&mut conn, id.as_str(), range, 5000).await?;
    Ok(Json(CheckReport {
        app: id.to_string(),
        range_seconds: range.as_secs(),
        summary,
        items: checks,
    }))
}
