//! Functions: `…/invoke[/{path}]` (any method) runs an app's function once
//! with the request body on stdin; executions can be read, listed and
//! cancelled. The run itself is a job in the function queue that any worker
//! takes; a sync caller learns its end by NOTIFY (the `/ws` event stream this
//! replica LISTENs to), never by polling the row in a loop.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use norn_shared::db::functions::{
    self, CancelRequested, Execution, InvokeAccepted, InvokeResult, Invoked, NewInvocation,
    Outcome, Status, Trigger,
};
use norn_shared::db::{apps, deployments};
use norn_shared::events::{Event, EventBody};
use norn_shared::infraspec::{Function, InfraSpec};
use serde::Deserialize;
use tokio::sync::broadcast;

use super::apps::app_id;
use crate::auth::Principal;
use crate::body::{Body, Query, list_limit};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The largest request body a function receives (on stdin).
pub const BODY_LIMIT: usize = 1 << 20;
/// The largest query string (beyond `process` and `async`) and path passed on.
const MAX_QUERY: usize = 8 << 10;
const MAX_PATH: usize = 2048;
const MAX_CONTENT_TYPE: usize = 256;
/// How long a sync caller is kept waiting; past it the answer is 202 with
/// the execution's address, and the run goes on.
const SYNC_WAIT: Duration = Duration::from_secs(300);
/// A sync caller re-reads its execution this often in case a NOTIFY was
/// lost (the replica's LISTEN connection dropped); the event is what
/// normally answers it.
const RECHECK: Duration = Duration::from_secs(5);

/// `ANY /api/apps/{id}/invoke[/{*path}]`.
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/api/apps/{id}/invoke",
    tag = "functions",
    summary = "Invoke the app function",
    params(("id" = String, Path, description = "app name")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the function stdin"),
    responses(
        (status = 200, body = InvokeResult, description = "the run ended (sync)"),
        (status = 202, body = InvokeAccepted, description = "async, or the sync wait ran out"),
        crate::openapi::Errors,
    ),
    security(("bearer" = ["deployer"])),
)]
pub async fn invoke(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(params): Path<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Body(body): Body<BODY_LIMIT>,
) -> ApiResult<Response> {
    let raw_id = params.get("id").map(String::as_str).unwrap_or_default();
    let path = format!("/{}", params.get("path").map(String::as_str).unwrap_or(""));
    if path.len() > MAX_PATH {
        return Err(ApiError::field(
            "path",
            format!("must be at most {MAX_PATH} bytes"),
        ));
    }
    let request = RequestQuery::parse(uri.query().unwrap_or(""))?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|v| v.len() <= MAX_CONTENT_TYPE)
                .ok_or_else(|| {
                    ApiError::field(
                        "Content-Type",
                        format!("must be visible ASCII, at most {MAX_CONTENT_TYPE} bytes"),
                    )
                })?,
        ),
    };
    let app = app_id(raw_id)?;
    let mut conn = state.pool.acquire().await?;
    let found = apps::get(&mut conn, app.as_str())
        .await
        .map_err(super::apps::invalid_spec)?
        .ok_or_else(|| ApiError::NotFound(format!("app {app} not found")))?;
    let (process, function) = pick_function(&found.spec, request.process.as_deref())?;
    let image = deployments::current(&mut conn, app.as_str())
        .await?
        .and_then(|d| d.image_tag)
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "app {app} has no release yet: deploy it before invoking its functions"
            ))
        })?;
    drop(conn);
    // Subscribed before the commit, so the end of a fast run is not missed.
    let events = (!request.asynchronous).then(|| state.events.subscribe());
    let mut tx = state.pool.begin().await?;
    let invoked = functions::invoke(
        &mut tx,
        &NewInvocation {
            app: app.as_str(),
            process: &process,
            trigger: if request.asynchronous {
                Trigger::Async
            } else {
                Trigger::Sync
            },
            invoked_by: &by.name,
            method: method.as_str(),
            path: &path,
            query: &request.rest,
            content_type,
            input: &body,
            image_tag: &image,
            timeout_ms: function.timeout.as_millis().min(i64::MAX as u128) as i64,
            concurrency: function.concurrency,
            backlog: state.config.function_backlog,
        },
    )
    .await
    .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let id = match invoked {
        Invoked::Accepted(id) => id,
        Invoked::Full { active } => {
            return Err(ApiError::TooMany {
                message: format!(
                    "function {process} of app {app} has {active} invocations waiting or running \
                     (concurrency {} + backlog {}); try again later",
                    function.concurrency, state.config.function_backlog
                ),
                retry_after_secs: function.timeout.as_secs().clamp(1, 30),
            });
        }
    };
    tx.commit().await?;
    match events {
        None => Ok(accepted(id, Status::Queued)),
        Some(events) => wait_for_end(&state, id, events).await,
    }
}

/// The query string of an invocation: Norn's own parameters, and the rest,
/// which the function receives as `NORN_REQUEST_QUERY`.
struct RequestQuery {
    process: Option<String>,
    asynchronous: bool,
    rest: String,
}

impl RequestQuery {
    fn parse(query: &str) -> ApiResult<Self> {
        let mut parsed = Self {
            process: None,
            asynchronous: false,
            rest: String::new(),
        };
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                // Process names are `[a-z0-9-]`: nothing to decode.
                "process" => parsed.process = Some(value.to_owned()),
                "async" => {
                    parsed.asynchronous = match value {
                        "" | "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(ApiError::field("async", "must be true or false")),
                    }
                }
                _ => rest.push(pair),
            }
        }
        parsed.rest = rest.join("&");
        if parsed.rest.len() > MAX_QUERY {
            return Err(ApiError::field(
                "query",
                format!("must be at most {MAX_QUERY} bytes"),
            ));
        }
        Ok(parsed)
    }
}

/// The function to run: the one named, or the app's only one.
fn pick_function(spec: &InfraSpec, named: Option<&str>) -> ApiResult<(String, Function)> {
    let app = spec.name.as_str();
    if let Some(name) = named {
        let process = spec.processes.get(name).ok_or_else(|| {
            ApiError::field("process", format!("app {app} has no process {name:?}"))
        })?;
        let function = process.function.clone().ok_or_else(|| {
            ApiError::field(
                "process",
                format!("process {name} of app {app} is not a function"),
            )
        })?;
        return Ok((name.to_owned(), function));
    }
    let mut functions = spec
        .processes
        .iter()
        .filter_map(|(name, p)| Some((name.clone(), p.function.clone()?)));
    match (functions.next(), functions.next()) {
        (Some(only), None) => Ok(only),
        (None, _) => Err(ApiError::field(
            "process",
            format!("app {app} has no function"),
        )),
        (Some(_), Some(_)) => Err(ApiError::field(
            "process",
            format!("app {app} has several functions: name one with ?process="),
        )),
    }
}

/// 202 with the execution's address: the run goes on without the caller.
fn accepted(id: i64, status: Status) -> Response {
    let location = format!("/api/functions/executions/{id}");
    let mut response = (
        StatusCode::ACCEPTED,
        Json(InvokeAccepted {
            id,
            status,
            location: location.clone(),
        }),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Waits for the run's end event (or, should one be lost, a re-read of the
/// row) and answers with the result.
async fn wait_for_end(
    state: &AppState,
    id: i64,
    mut events: broadcast::Receiver<String>,
) -> ApiResult<Response> {
    let give_up = tokio::time::Instant::now() + SYNC_WAIT;
    let mut open = true;
    loop {
        let next_event = async {
            if open {
                events.recv().await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            event = next_event => match event {
                Ok(text) if !is_end_of(&text, id) => continue,
                // The end, or events were missed: read the row.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                // The replica is stopping: only the re-reads are left.
                Err(broadcast::error::RecvError::Closed) => open = false,
            },
            () = tokio::time::sleep(RECHECK) => {}
            () = tokio::time::sleep_until(give_up) => {}
        }
        let mut conn = state.pool.acquire().await?;
        let execution = functions::get(&mut conn, id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("execution {id} not found")))?;
        if execution.status.is_final() {
            return Ok(Json(InvokeResult::from(&execution)).into_response());
        }
        if tokio::time::Instant::now() >= give_up {
            return Ok(accepted(id, execution.status));
        }
    }
}

fn is_end_of(text: &str, id: i64) -> bool {
    // Most events are not a function's: skip parsing them.
    if !text.contains("\"func.") {
        return false;
    }
    match serde_json::from_str::<Event>(text).map(|e| e.body) {
        Ok(EventBody::FuncCompleted(end) | EventBody::FuncFailed(end)) => end.execution_id == id,
        _ => false,
    }
}

fn execution_id(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::field("id", "must be an execution id (a positive integer)"))
}

/// `GET /api/functions/executions/{id}`.
#[utoipa::path(
    get,
    path = "/api/functions/executions/{id}",
    tag = "functions",
    summary = "One execution",
    params(("id" = i64, Path, description = "execution id")),
    responses((status = 200, body = Execution), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Execution>> {
    let id = execution_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    let execution = functions::get(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("execution {id} not found")))?;
    Ok(Json(execution))
}

/// `POST /api/functions/executions/{id}/cancel`: a waiting run ends at once;
/// a running one is stopped by its worker (202).
#[utoipa::path(
    post,
    path = "/api/functions/executions/{id}/cancel",
    tag = "functions",
    summary = "Cancel an execution",
    params(("id" = i64, Path, description = "execution id")),
    responses(
        (status = 200, body = Execution, description = "it had not started: ended `canceled`"),
        (status = 202, body = CancelRequested, description = "its worker is stopping it"),
        crate::openapi::Errors,
    ),
    security(("bearer" = ["deployer"])),
)]
pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = execution_id(&id)?;
    let mut tx = state.pool.begin().await?;
    let execution = functions::get(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("execution {id} not found")))?;
    match execution.status {
        Status::Queued => {
            let concurrency =
                functions::concurrency_of(&mut tx, &execution.app, &execution.process).await;
            let outcome = Outcome::failed(Status::Canceled, "canceled before it started");
            let ended = functions::end(&mut tx, id, &outcome, concurrency)
                .await
                .map_err(|e| ApiError::Internal(Box::new(e)))?;
            tx.commit().await?;
            match ended {
                Some(ended) => Ok(Json(ended).into_response()),
                // It started meanwhile: ask again.
                None => Err(ApiError::Conflict(format!(
                    "execution {id} started meanwhile; cancel it again"
                ))),
            }
        }
        Status::Running => {
            functions::request_cancel(&mut tx, id).await?;
            tx.commit().await?;
            let requested = CancelRequested {
                id,
                status: Status::Running,
                cancel_requested: true,
            };
            Ok((StatusCode::ACCEPTED, Json(requested)).into_response())
        }
        ended => Err(ApiError::Conflict(format!(
            "execution {id} already ended ({})",
            ended.as_str()
        ))),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    process: Option<String>,
    status: Option<Status>,
    limit: Option<i64>,
}

/// `GET /api/apps/{id}/functions/executions?process=&status=&limit=`,
/// newest first, without output.
#[utoipa::path(
    get,
    path = "/api/apps/{id}/functions/executions",
    tag = "functions",
    summary = "Function executions of the app",
    params(("id" = String, Path, description = "app name"), ListQuery),
    responses((status = 200, body = Vec<Execution>), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Execution>>> {
    let app = app_id(&id)?;
    let limit = list_limit(q.limit)?;
    let mut conn = state.pool.acquire().await?;
    apps::get(&mut conn, app.as_str())
        .await
        .map_err(super::apps::invalid_spec)?
        .ok_or_else(|| ApiError::NotFound(format!("app {app} not found")))?;
    let list = functions::list(
        &mut conn,
        app.as_str(),
        q.process.as_deref(),
        q.status,
        limit,
    )
    .await?;
    Ok(Json(list))
}
