//! Bearer-token check. With `NORN_API_TOKEN` unset the API is open (local
//! use); with it set every `/api` route but `/api/health` needs the token, and
//! `/ws` accepts it as `?token=` too since browsers cannot set headers there.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::state::AppState;

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = &state.config.api_token else {
        return Ok(next.run(req).await);
    };
    if req.uri().path() == "/api/health" {
        return Ok(next.run(req).await);
    }
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    let given = header.or(if req.uri().path() == "/ws" {
        query
    } else {
        None
    });
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), expected.expose().as_bytes()) => {
            Ok(next.run(req).await)
        }
        _ => Err(ApiError::Unauthorized),
    }
}
