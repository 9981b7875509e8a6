//! `GET /api/deployments/{id}/logs[?step=<step>&follow=true]`: a
//! deployment's full step output (up to `NORN_STEP_LOG_MAX` per step) as
//! chunked plain text. With `follow` the response stays open and carries new
//! output until the step (or, without `step`, the deployment) has ended.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream};
use norn_shared::db::{deployments, logs};
use norn_shared::domain::Step;
use serde::Deserialize;
use sqlx::PgPool;

use super::deployments::deployment_id;
use crate::body::Query;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Chunks read per query.
const PAGE: i64 = 64;
/// How often a follow looks for new output.
const POLL: Duration = Duration::from_millis(250);

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    step: Option<String>,
    #[serde(default)]
    follow: bool,
}

#[utoipa::path(
    get,
    path = "/api/deployments/{id}/logs",
    tag = "deployments",
    summary = "Step output, streamed",
    params(("id" = String, Path, description = "deployment id (UUID)"), LogsQuery),
    responses((status = 200, body = String, content_type = "text/plain"), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let id = deployment_id(&id)?.to_owned();
    let step = q
        .step
        .as_deref()
        .map(|s| s.parse::<Step>().map_err(|e| ApiError::field("step", e)))
        .transpose()?;
    let mut conn = state.pool.acquire().await?;
    if deployments::get(&mut conn, &id).await?.is_none() {
        return Err(ApiError::NotFound(format!("deployment {id} not found")));
    }
    drop(conn);
    let reader = Reader {
        pool: state.pool.clone(),
        id,
        step,
        follow: q.follow,
        after: 0,
        last: None,
        done: false,
    };
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(reader.into_stream()),
    )
        .into_response())
}

struct Reader {
    pool: PgPool,
    id: String,
    step: Option<Step>,
    follow: bool,
    after: i64,
    /// The step and attempt of the last chunk sent, for section headers.
    last: Option<(String, i32)>,
    done: bool,
}

impl Reader {
    fn into_stream(self) -> impl Stream<Item = Result<String, sqlx::Error>> {
        stream::try_unfold(self, |mut r| async move {
            loop {
                if r.done {
                    return Ok(None);
                }
                let text = r.next_page().await?;
                if !text.is_empty() {
                    return Ok(Some((text, r)));
                }
                // Nothing new: finished, or wait for more while following.
                if !r.follow || r.ended().await? {
                    // One last read: output written just before the end.
                    r.done = true;
                    let text = r.next_page().await?;
                    if !text.is_empty() {
                        return Ok(Some((text, r)));
                    }
                    return Ok(None);
                }
                tokio::time::sleep(POLL).await;
            }
        })
    }

    async fn next_page(&mut self) -> Result<String, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let step = self.step.map(|s| s.as_str());
        let chunks = logs::read(&mut conn, &self.id, step, self.after, PAGE).await?;
        let mut text = String::new();
        for c in chunks {
            self.after = c.id;
            let section = (c.step.clone(), c.attempt);
            // Without a step filter, each step's output gets a header.
            if self.step.is_none() && self.last.as_ref() != Some(&section) {
                text.push_str(&format!("── {} (attempt {}) ──\n", c.step, c.attempt));
            }
            self.last = Some(section);
            text.push_str(&c.chunk);
        }
        Ok(text)
    }

    /// The followed step (or the deployment) will write no more.
    async fn ended(&self) -> Result<bool, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let Some(d) = deployments::get(&mut conn, &self.id)
            .await
            .map_err(|e| match e {
                norn_shared::db::DbError::Sqlx(e) => e,
                other => sqlx::Error::Protocol(other.to_string()),
            })?
        else {
            return Ok(true);
        };
        if d.status().is_terminal() {
            return Ok(true);
        }
        let Some(step) = self.step else {
            return Ok(false);
        };
        let finished = d
            .steps
            .0
            .iter()
            .any(|e| e.step == step && e.status != norn_shared::domain::StepStatus::Running);
        Ok(finished)
    }
}
