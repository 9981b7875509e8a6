//! The change runner through the API, for apps with `migrations.dir`.
//! `GET /api/apps/{id}/changes` answers from the newest recorded status (a
//! deploy's migrate step or a run): the API holds no checkout. Every other
//! operation is a run, queued as a job a worker performs on a fresh checkout
//! of the deployed commit, as the app's own role; poll it at
//! `GET …/changes/runs/{run}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use norn_shared::changes::{self, ChangeStatus, State as ChangeState};
use norn_shared::db::apps;
use norn_shared::db::change_runs::{
    self, ChangeAction, ChangeRunRecord, ChangeRunStatus, MAX_OPEN_PER_APP, NewChangeRun,
};
use norn_shared::db::deployments;
use norn_shared::infraspec::Migrations;
use norn_shared::jobs::ChangesJob;
use norn_shared::queue::{self, Queue};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::apps::app_id;
use super::snapshots::flag;
use crate::auth::Principal;
use crate::body::Query;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use norn_shared::db::tokens::Role;

/// `GET /api/apps/{id}/changes`: every change, as of the newest run that
/// read them, and the app's recent runs.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangesOverview {
    pub app: String,
    /// `migrations.dir`.
    pub dir: String,
    pub database: String,
    /// The commit whose folder the status was read from; absent until a
    /// deploy or a run has read it.
    pub commit_sha: Option<String>,
    /// When the status was read.
    pub checked_at: Option<chrono::DateTime<chrono::Utc>>,
    pub changes: Vec<ChangeStatus>,
    /// The newest runs (without their status lists), newest first.
    pub runs: Vec<ChangeRunRecord>,
}

/// The app, its `migrations.dir` and its database.
async fn changes_of(conn: &mut PgConnection, id: &str) -> ApiResult<(String, String, String)> {
    let app = app_id(id)?;
    let registered = apps::get(conn, app.as_str())
        .await
        .map_err(super::apps::invalid_spec)?
        .ok_or_else(|| ApiError::NotFound(format!("app {app} is not registered")))?;
    let Some(Migrations::Dir(dir)) = registered.spec.migrations.clone() else {
        return Err(ApiError::NotFound(format!(
            "app {app} declares no migrations.dir, so Norn's change runner does not manage its schema"
        )));
    };
    let database = registered
        .spec
        .services
        .postgres
        .map(|pg| pg.database)
        .unwrap_or_default();
    Ok((registered.id, dir, database))
}

#[utoipa::path(
    get,
    path = "/api/apps/{id}/changes",
    tag = "changes",
    summary = "Every change: pending, applied, reverted, failed or drifted",
    params(("id" = String, Path, description = "app name")),
    responses((status = 200, body = ChangesOverview), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ChangesOverview>> {
    let mut conn = state.pool.acquire().await?;
    let (app, dir, database) = changes_of(&mut conn, &id).await?;
    let latest = change_runs::latest_status(&mut conn, &app).await?;
    let runs = change_runs::recent(&mut conn, &app, 10).await?;
    let (commit_sha, checked_at, changes) = match latest {
        Some(r) => (
            r.commit_sha,
            r.finished_at,
            r.changes.map(|c| c.0).unwrap_or_default(),
        ),
        None => (None, None, Vec::new()),
    };
    Ok(Json(ChangesOverview {
        app,
        dir,
        database,
        commit_sha,
        checked_at,
        changes,
        runs,
    }))
}

#[utoipa::path(
    get,
    path = "/api/apps/{id}/changes/runs/{run}",
    tag = "changes",
    summary = "One change run: its status, what ran, and every change's status after",
    params(("id" = String, Path, description = "app name"), ("run" = String, Path, description = "the run's id")),
    responses((status = 200, body = ChangeRunRecord), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn get(
    State(state): State<AppState>,
    Path((id, run)): Path<(String, String)>,
) -> ApiResult<Json<ChangeRunRecord>> {
    let app = app_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    change_runs::get(&mut conn, &run)
        .await?
        .filter(|r| r.app == app.as_str())
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("app {app} has no change run {run}")))
}

/// What a queued run is to do.
struct Request {
    action: ChangeAction,
    targets: Option<Vec<String>>,
    count: Option<i32>,
    force: bool,
}

/// Records the run and queues its job in one transaction.
async fn queue_run(
    state: &AppState,
    by: &Principal,
    id: &str,
    req: Request,
) -> ApiResult<(StatusCode, Json<ChangeRunRecord>)> {
    let mut tx = state.pool.begin().await?;
    let (app, _, _) = changes_of(&mut tx, id).await?;
    // One run at a time is the norm; a few may wait, not a flood.
    apps::lock(&mut tx, &app)
        .await
        .map_err(super::apps::invalid_spec)?;
    if change_runs::open(&mut tx, &app).await? >= MAX_OPEN_PER_APP {
        return Err(ApiError::TooMany {
            message: format!(
                "{MAX_OPEN_PER_APP} change runs of {app} are already queued or running"
            ),
            retry_after_secs: 10,
        });
    }
    let sha = deployments::current(&mut tx, &app)
        .await?
        .and_then(|d| d.commit_sha)
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "app {app} has no deployed release: the change runner reads the deployed commit's folder, so deploy it first"
            ))
        })?;
    let run_id = uuid::Uuid::now_v7().to_string();
    change_runs::insert_queued(
        &mut tx,
        &NewChangeRun {
            id: &run_id,
            app: &app,
            action: req.action,
            targets: req.targets,
            count: req.count,
            force: req.force,
            commit_sha: &sha,
            requested_by: &by.name,
        },
    )
    .await?;
    let job = ChangesJob {
        run_id: run_id.clone(),
        app: app.clone(),
    };
    queue::enqueue(&mut tx, Queue::Changes, &job, Some(&run_id)).await?;
    let record = change_runs::get(&mut tx, &run_id)
        .await?
        .ok_or_else(|| ApiError::Internal("the queued run vanished".into()))?;
    tx.commit().await?;
    tracing::info!(app = %app, job.id = %run_id, action = ?record.action, "change run queued");
    debug_assert_eq!(record.status, ChangeRunStatus::Queued);
    Ok((StatusCode::ACCEPTED, Json(record)))
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct RunQuery {
    /// Run drifted changes again instead of refusing.
    force: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/apps/{id}/changes/run",
    tag = "changes",
    summary = "Apply every pending change of the deployed commit (force: admin only)",
    params(("id" = String, Path, description = "app name"), RunQuery),
    responses((status = 202, body = ChangeRunRecord), crate::openapi::Errors),
    security(("bearer" = ["deployer"])),
)]
pub async fn run(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<RunQuery>,
) -> ApiResult<(StatusCode, Json<ChangeRunRecord>)> {
    let force = flag(q.force.as_deref(), "force")?;
    // A deploy never runs an edited change again: doing so is an admin's call.
    if force && by.role < Role::Admin {
        return Err(ApiError::Forbidden(format!(
            "token {} has role {}; running drifted changes again (force) needs admin",
            by.name,
            by.role.as_str()
        )));
    }
    let req = Request {
        action: ChangeAction::Run,
        targets: None,
        count: None,
        force,
    };
    queue_run(&state, &by, &id, req).await
}

#[utoipa::path(
    post,
    path = "/api/apps/{id}/changes/dry-run",
    tag = "changes",
    summary = "What a run would apply, with the SQL; writes nothing",
    params(("id" = String, Path, description = "app name")),
    responses((status = 202, body = ChangeRunRecord), crate::openapi::Errors),
    security(("bearer" = ["deployer"])),
)]
pub async fn dry_run(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ChangeRunRecord>)> {
    let req = Request {
        action: ChangeAction::DryRun,
        targets: None,
        count: None,
        force: false,
    };
    queue_run(&state, &by, &id, req).await
}

#[utoipa::path(
    post,
    path = "/api/apps/{id}/changes/check",
    tag = "changes",
    summary = "Read every change's status again from the database",
    params(("id" = String, Path, description = "app name")),
    responses((status = 202, body = ChangeRunRecord), crate::openapi::Errors),
    security(("bearer" = ["deployer"])),
)]
pub async fn check(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ChangeRunRecord>)> {
    let req = Request {
        action: ChangeAction::Status,
        targets: None,
        count: None,
        force: false,
    };
    queue_run(&state, &by, &id, req).await
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct RevertQuery {
    /// Reverting runs the change's revert/ files: `true` to go ahead.
    confirm: Option<String>,
}

fn confirmed(q: &RevertQuery, what: &str) -> ApiResult<()> {
    if flag(q.confirm.as_deref(), "confirm")? {
        return Ok(());
    }
    Err(ApiError::field(
        "confirm",
        format!("{what} runs revert/ files, which may drop data; repeat with ?confirm=true"),
    ))
}

#[utoipa::path(
    post,
    path = "/api/apps/{id}/changes/{name}/revert",
    tag = "changes",
    summary = "Revert one applied change",
    params(("id" = String, Path, description = "app name"), ("name" = String, Path, description = "the change, YYYY-MM-DD-description"), RevertQuery),
    responses((status = 202, body = ChangeRunRecord), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn revert(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path((id, name)): Path<(String, String)>,
    Query(q): Query<RevertQuery>,
) -> ApiResult<(StatusCode, Json<ChangeRunRecord>)> {
    if !changes::disk::valid_name(&name) {
        return Err(ApiError::field(
            "name",
            "a change is named YYYY-MM-DD-description (lower case, digits, - _ .)",
        ));
    }
    confirmed(&q, &format!("reverting {name}"))?;
    known_applied(&state, &id, &name).await?;
    let req = Request {
        action: ChangeAction::Revert,
        targets: Some(vec![name]),
        count: None,
        force: false,
    };
    queue_run(&state, &by, &id, req).await
}

/// Refuses early what the newest known status says cannot be reverted; the
/// worker checks again against the database itself.
async fn known_applied(state: &AppState, id: &str, name: &str) -> ApiResult<()> {
    let mut conn = state.pool.acquire().await?;
    let (app, _, _) = changes_of(&mut conn, id).await?;
    let Some(latest) = change_runs::latest_status(&mut conn, &app).await? else {
        return Ok(());
    };
    let changes = latest.changes.map(|c| c.0).unwrap_or_default();
    match changes.iter().find(|c| c.name == name) {
        None => Err(ApiError::NotFound(format!(
            "app {app} has no change {name} (as of {})",
            latest
                .finished_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        ))),
        Some(c) if matches!(c.state, ChangeState::Applied | ChangeState::Drifted) => Ok(()),
        Some(c) => Err(ApiError::Conflict(format!(
            "change {name} of {app} is {}, not applied: nothing to revert",
            serde_json::to_value(c.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        ))),
    }
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct RewindQuery {
    /// How many of the newest applied changes to revert (1..=1000).
    count: Option<String>,
    /// `true` to go ahead.
    confirm: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/apps/{id}/changes/rewind",
    tag = "changes",
    summary = "Revert the newest applied changes, newest first",
    params(("id" = String, Path, description = "app name"), RewindQuery),
    responses((status = 202, body = ChangeRunRecord), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn rewind(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<RewindQuery>,
) -> ApiResult<(StatusCode, Json<ChangeRunRecord>)> {
    let count = match q.count.as_deref() {
        None => 1,
        Some(n) => n
            .parse::<i32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::field("count", "count is a number from 1 to 1000"))?,
    };
    let confirm = RevertQuery { confirm: q.confirm };
    confirmed(&confirm, &format!("rewinding {count} change(s)"))?;
    let req = Request {
        action: ChangeAction::Rewind,
        targets: None,
        count: Some(count),
        force: false,
    };
    queue_run(&state, &by, &id, req).await
}
