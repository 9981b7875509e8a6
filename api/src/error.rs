//! The one HTTP error type. 4xx carry a useful message (and the field it is
//! about); 5xx carry a generic body, with the cause logged once, here.

use crate::openapi::ErrorBody;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub enum ApiError {
    BadRequest {
        message: String,
        field: Option<String>,
    },
    Unauthorized,
    /// 403: a valid token whose role is below what the route needs.
    Forbidden(String),
    NotFound(String),
    /// The request is valid but the resource is not in a state to accept it.
    Conflict(String),
    /// 409 about one field of the request (another app owns the name).
    ConflictOn {
        message: String,
        field: String,
    },
    Unavailable(String),
    /// 413: the body is larger than the route accepts.
    TooLarge {
        limit: usize,
    },
    /// 429 with `Retry-After` (seconds).
    TooMany {
        message: String,
        retry_after_secs: u64,
    },
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            field: None,
        }
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

impl<E> From<E> for ApiError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn from(e: E) -> Self {
        Self::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let said = |error: String| ErrorBody { error, field: None };
        let (status, body) = match self {
            ApiError::BadRequest { message, field } => (
                StatusCode::BAD_REQUEST,
                ErrorBody {
                    error: message,
                    field,
                },
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                said("missing or invalid bearer token".into()),
            ),
            ApiError::Forbidden(what) => (StatusCode::FORBIDDEN, said(what)),
            ApiError::NotFound(what) => (StatusCode::NOT_FOUND, said(what)),
            ApiError::Conflict(what) => (StatusCode::CONFLICT, said(what)),
            ApiError::ConflictOn { message, field } => (
                StatusCode::CONFLICT,
                ErrorBody {
                    error: message,
                    field: Some(field),
                },
            ),
            ApiError::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                said(format!(
                    "the request body exceeds this route's limit of {limit} bytes"
                )),
            ),
            ApiError::Unavailable(what) => (StatusCode::SERVICE_UNAVAILABLE, said(what)),
            ApiError::TooMany {
                message,
                retry_after_secs,
            } => {
                let mut response =
                    (StatusCode::TOO_MANY_REQUESTS, Json(said(message))).into_response();
                response.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(retry_after_secs),
                );
                return response;
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    said("internal error".into()),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
