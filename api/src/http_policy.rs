//! What every API response and request goes through besides auth: a
//! deadline, the origin rule, CORS for the origins an operator allows, and
//! headers that keep browsers from caching, sniffing or framing answers.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// Ends a request that runs past `NORN_REQUEST_TIMEOUT` with a JSON 503
/// (its work is dropped; every write is one transaction, so nothing is left
/// half done). Long-lived routes (`/ws`, log streams, sync invocations) are
/// not under it: they have bounds of their own.
pub async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "the request took longer than {limit:?} (NORN_REQUEST_TIMEOUT); try again"
        ))
        .into_response(),
    }
}

/// The page's origin is this host itself, or one the operator listed.
pub fn origin_allowed(origin: &str, headers: &HeaderMap, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or_default();
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// Browsers send `Origin`; the CLI and curl do not. A request from a page
/// of another origin is refused outright (403), not only hidden from it:
/// with auth off (a local `norn up`) a page the user visits could otherwise
/// deploy through a form post. Listed origins get CORS answers, preflights
/// included.
pub async fn origins_and_headers(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("?").to_owned());
    let allowed = origin
        .as_deref()
        .is_some_and(|o| origin_allowed(o, req.headers(), &state.config.allowed_origins));
    let mut response = match &origin {
        Some(o) if !allowed => ApiError::Forbidden(format!(
            "requests from origin {o} are refused (NORN_ALLOWED_ORIGINS lists the allowed ones)"
        ))
        .into_response(),
        Some(_)
            if req.method() == Method::OPTIONS
                && req
                    .headers()
                    .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) =>
        {
            preflight()
        }
        _ => next.run(req).await,
    };
    let headers = response.headers_mut();
    if let Some(origin) = origin
        .filter(|_| allowed)
        .and_then(|o| HeaderValue::from_str(&o).ok())
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, PATCH"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, idempotency-key"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}
