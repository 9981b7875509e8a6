//! Bearer-token check. With `NORN_API_TOKEN` unset the API is open (local
//! use; the API refuses to start on a non-loopback address that way unless
//! `NORN_ALLOW_NO_AUTH=true`); with it set every `/api` route but
//! `/api/health` needs the token, and `/ws` accepts it as `?token=` too since
//! browsers cannot set headers there. `/api/health` answers anyone with up or
//! degraded, and gives details only to a caller with the token.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use norn_shared::Config;

use crate::error::ApiError;
use crate::state::AppState;

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request may see everything: auth is off, or it carries the
/// token (`Authorization: Bearer`, or `?token=` where `query_token` allows).
pub fn authorized(config: &Config, headers: &HeaderMap, query_token: Option<&str>) -> bool {
    let Some(expected) = &config.api_token else {
        return true;
    };
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    header
        .or(query_token)
        .is_some_and(|token| constant_time_eq(token.as_bytes(), expected.expose().as_bytes()))
}

pub async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if req.uri().path() == "/api/health" {
        return Ok(next.run(req).await);
    }
    let query = (req.uri().path() == "/ws")
        .then(|| req.uri().query())
        .flatten()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    if authorized(&state.config, req.headers(), query) {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Refuses to serve the API on a non-loopback address without a token:
/// anyone who could reach it could deploy code onto this machine.
/// `NORN_ALLOW_NO_AUTH=true` accepts that, with a warning at every start.
pub fn check_exposure(config: &Config, addr: std::net::SocketAddr) -> std::io::Result<()> {
    if config.api_token.is_some() || addr.ip().is_loopback() {
        return Ok(());
    }
    if config.allow_no_auth {
        tracing::warn!(
            %addr,
            "the API serves {addr} with authentication off (NORN_ALLOW_NO_AUTH=true): anyone who reaches it can deploy code on this machine"
        );
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "refusing to serve the API on {addr} without NORN_API_TOKEN: anyone who can reach it could deploy code on this machine. \
         Set NORN_API_TOKEN, bind to 127.0.0.1 (NORN_BIND_ADDR), or set NORN_ALLOW_NO_AUTH=true to accept the risk"
    )))
}
