//! `/api/apps/{id}/cron…`: state, recent executions and incidents, run now,
//! pause/resume, schedule override.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use norn_shared::db::cron::{self, CronOverview, CronTriggered, CronView};
use norn_shared::db::{apps, saga};
use norn_shared::domain::CronExpr;
use norn_shared::infraspec::Schedule;
use norn_shared::jobs::CronJob;
use norn_shared::queue::{self, Queue};
use serde::Deserialize;
use sqlx::PgConnection;

use super::apps::app_id;
use crate::body::{Body, SMALL_LIMIT};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The app's scheduled process, or 404 (unknown app, or not a cron app).
async fn scheduled(conn: &mut PgConnection, raw_id: &str) -> ApiResult<(String, String, Schedule)> {
    let id = app_id(raw_id)?;
    let app = apps::get(conn, id.as_str())
        .await
        .map_err(super::apps::invalid_spec)?
        .ok_or_else(|| ApiError::NotFound(format!("app {id} not found")))?;
    app.spec
        .processes
        .iter()
        .find_map(|(name, p)| p.schedule.clone().map(|s| (name.clone(), s)))
        .map(|(process, schedule)| (app.id.clone(), process, schedule))
        .ok_or_else(|| ApiError::NotFound(format!("app {id} has no scheduled process")))
}

#[utoipa::path(
    get,
    path = "/api/apps/{id}/cron",
    tag = "cron",
    summary = "Cron state and recent runs",
    params(("id" = String, Path, description = "app name")),
    responses((status = 200, body = CronOverview), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<CronOverview>> {
    let mut conn = state.pool.acquire().await?;
    let (app, process, schedule) = scheduled(&mut conn, &id).await?;
    let cron_state = cron::get(&mut conn, &app).await?;
    let executions = cron::recent_executions(&mut conn, &app, 20).await?;
    let skipped = cron::recent_skipped(&mut conn, &app, 20).await?;
    let incidents =
        saga::recent_for_app(&mut conn, &app, &["cron.missed", "cron.timed_out"], 20).await?;
    Ok(Json(CronOverview {
        app,
        process,
        policy: schedule.policy,
        state: cron_state.as_ref().map(CronView::from),
        executions,
        skipped,
        incidents,
    }))
}

/// Runs the scheduled process now; the schedule is untouched.
#[utoipa::path(
    post,
    path = "/api/apps/{id}/cron/trigger",
    tag = "cron",
    summary = "Run the cron job now",
    params(("id" = String, Path, description = "app name")),
    responses((status = 202, body = CronTriggered), crate::openapi::Errors),
    security(("bearer" = ["deployer"])),
)]
pub async fn trigger(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<CronTriggered>)> {
    let mut tx = state.pool.begin().await?;
    let (app, process, _) = scheduled(&mut tx, &id).await?;
    let has_image = cron::get(&mut tx, &app)
        .await?
        .is_some_and(|s| s.image_tag.is_some());
    if !has_image {
        return Err(ApiError::Conflict(format!(
            "app {app} has not been deployed yet; deploy it before triggering"
        )));
    }
    let at = chrono::Utc::now();
    cron::record_tick(&mut tx, &app, &process, at, cron::Trigger::Manual).await?;
    let job = CronJob {
        app: app.clone(),
        process: process.clone(),
        scheduled_at: at,
    };
    queue::enqueue(&mut tx, Queue::Cron, &job, None).await?;
    tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(CronTriggered {
            app,
            process,
            scheduled_at: at,
            trigger: cron::Trigger::Manual,
        }),
    ))
}

async fn set_paused(state: AppState, id: String, paused: bool) -> ApiResult<Json<CronView>> {
    let mut tx = state.pool.begin().await?;
    let (app, process, schedule) = scheduled(&mut tx, &id).await?;
    cron::ensure(&mut tx, &app, &process, &schedule).await?;
    let updated = cron::set_paused(&mut tx, &app, paused)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("app {app} has no cron state")))?;
    tx.commit().await?;
    Ok(Json(CronView::from(&updated)))
}

#[utoipa::path(
    post,
    path = "/api/apps/{id}/cron/pause",
    tag = "cron",
    summary = "Pause the schedule",
    params(("id" = String, Path, description = "app name")),
    responses((status = 200, body = CronView), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<CronView>> {
    set_paused(state, id, true).await
}

#[utoipa::path(
    post,
    path = "/api/apps/{id}/cron/resume",
    tag = "cron",
    summary = "Resume the schedule",
    params(("id" = String, Path, description = "app name")),
    responses((status = 200, body = CronView), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<CronView>> {
    set_paused(state, id, false).await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ScheduleBody {
    /// A cron expression, or `null` to go back to the infraspec's schedule.
    schedule: Option<String>,
}

#[utoipa::path(
    put,
    path = "/api/apps/{id}/cron/schedule",
    tag = "cron",
    summary = "Override the schedule",
    params(("id" = String, Path, description = "app name")),
    request_body(content = ScheduleBody, content_type = "application/json"),
    responses((status = 200, body = CronView), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn set_schedule(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<SMALL_LIMIT>,
) -> ApiResult<Json<CronView>> {
    let body: ScheduleBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("invalid body: {e}")))?;
    let mut tx = state.pool.begin().await?;
    let (app, process, schedule) = scheduled(&mut tx, &id).await?;
    let expr = match body.schedule.as_deref().map(str::trim) {
        None => None,
        Some(text) => Some(
            CronExpr::parse(text, schedule.timezone.as_deref())
                .map_err(|e| ApiError::field("schedule", e))?,
        ),
    };
    cron::ensure(&mut tx, &app, &process, &schedule).await?;
    let updated = cron::set_override(&mut tx, &app, expr.as_ref().map(|e| e.as_str()))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("app {app} has no cron state")))?;
    tx.commit().await?;
    Ok(Json(CronView::from(&updated)))
}
