//! Request bodies with a per-route size limit, declared in the handler's
//! signature. Beyond it the answer is 413 with a JSON error naming the limit
//! (axum's own limit answers in plain text).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};

use crate::error::ApiError;

/// `POST /api/apps`: an infraspec.
pub const SPEC_LIMIT: usize = 1 << 20;
/// A git forge's webhook delivery (GitHub caps its payloads at 25 MB, but a
/// push lists at most 20 commits; real ones are tens of KiB).
pub const WEBHOOK_LIMIT: usize = 5 << 20;
/// Every other route that reads a body (small JSON objects).
pub const SMALL_LIMIT: usize = 64 << 10;

/// The raw body, at most `MAX` bytes.
pub struct Body<const MAX: usize>(pub Bytes);

impl<S: Send + Sync, const MAX: usize> FromRequest<S> for Body<MAX> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let too_large = || ApiError::TooLarge { limit: MAX };
        // Refuse early when the client says how much it will send.
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX as u64) {
            return Err(too_large());
        }
        axum::body::to_bytes(req.into_body(), MAX)
            .await
            .map(Body)
            .map_err(|_| too_large())
    }
}

/// The body as JSON of `T` (empty → `T::default()`); malformed → 400.
pub fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

/// A list's `limit` query parameter: 1..500, 50 when absent.
pub fn list_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field("limit", "must be 1..500"));
    }
    Ok(limit)
}

/// Query parameters; a malformed query (`?limit=ten`) is a 400 with the JSON
/// error body every other bad input gets (axum's own answers in plain text).
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for Query<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Query(q))
            .map_err(|e| ApiError::bad(format!("invalid query: {}", e.body_text())))
    }
}
