//! The health job: GET an app's health path on every instance once and
//! record the result.

use std::sync::Arc;
use std::time::Instant;

use apalis::prelude::{BoxDynError, Data};
use norn_shared::db::health::{self, NewCheck};
use norn_shared::db::{apps, routes};
use norn_shared::events::{self, Event, EventBody};
use norn_shared::jobs::HealthJob;

use crate::WorkerError;
use crate::state::WorkerState;

pub async fn run(job: HealthJob, state: Data<Arc<WorkerState>>) -> Result<(), BoxDynError> {
    let state: Arc<WorkerState> = (*state).clone();
    let _busy = state.busy();
    check(&job.app, &state).await.map_err(|e| {
        tracing::warn!(app = %job.app, error = %e, "health check could not be recorded");
        Box::new(e) as BoxDynError
    })
}

struct Outcome {
    healthy: bool,
    response_ms: i32,
    status_code: Option<i32>,
    error: Option<String>,
}

async fn check(app_id: &str, state: &WorkerState) -> Result<(), WorkerError> {
    let mut conn = state.pool.acquire().await?;
    let Some(app) = apps::get(&mut conn, app_id).await? else {
        return Ok(());
    };
    let routes = routes::for_app(&mut conn, app_id).await?;
    drop(conn);
    // The served process that declares a health path; apps without one are not probed.
    let Some((route, path)) = routes.iter().find_map(|r| {
        let health = app.spec.processes.get(&r.process)?.health.as_ref()?;
        Some((r, health.path.clone()))
    }) else {
        return Ok(());
    };
    let mut outcome = Outcome {
        healthy: true,
        response_ms: 0,
        status_code: None,
        error: None,
    };
    // Every instance must answer: one bad replica is an unhealthy app.
    for upstream in route.upstream.split(',').filter(|u| !u.is_empty()) {
        let one = probe(state, &format!("http://{upstream}{path}")).await;
        outcome.response_ms = outcome.response_ms.max(one.response_ms);
        outcome.status_code = one.status_code.or(outcome.status_code);
        if !one.healthy {
            outcome.healthy = false;
            outcome.status_code = one.status_code;
            outcome.error = one.error.map(|e| format!("{upstream}: {e}"));
            break;
        }
    }
    let mut tx = state.pool.begin().await?;
    let check = health::insert(
        &mut tx,
        &NewCheck {
            app: app_id,
            healthy: outcome.healthy,
            response_ms: Some(outcome.response_ms),
            status_code: outcome.status_code,
            error: outcome.error.as_deref(),
        },
    )
    .await?;
    events::publish(&mut tx, &Event::new(app_id, EventBody::HealthCheck(check))).await?;
    tx.commit().await?;
    Ok(())
}

async fn probe(state: &WorkerState, url: &str) -> Outcome {
    let started = Instant::now();
    let timeout = state.config.health_check_timeout;
    let result = state.http.get(url).timeout(timeout).send().await;
    let response_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
    match result {
        Ok(resp) => {
            let code = resp.status();
            let healthy = code.is_success() || code.is_redirection();
            Outcome {
                healthy,
                response_ms,
                status_code: Some(i32::from(code.as_u16())),
                error: (!healthy).then(|| format!("answered {code}")),
            }
        }
        Err(e) => Outcome {
            healthy: false,
            response_ms,
            status_code: None,
            error: Some(if e.is_timeout() {
                format!("no answer within {timeout:?}")
            } else {
                format!("unreachable: {e}")
            }),
        },
    }
}
