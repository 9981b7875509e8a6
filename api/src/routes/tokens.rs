//! `/api/tokens`: named API tokens with a role (admins only). A token is
//! shown once, in the answer that makes it; only its SHA-256 is stored.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use norn_shared::crypto::{new_api_token, token_hash};
use norn_shared::db::tokens::{self, NewToken, Role};
use serde::Deserialize;

use crate::auth::Principal;
use crate::body::{Body, SMALL_LIMIT};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The longest a token may live.
const MAX_LIFETIME_DAYS: i64 = 3650;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateBody {
    name: String,
    role: Role,
    /// `90m`, `12h`, `30d`; or `expiresAt`. Neither: it does not expire.
    expires_in: Option<String>,
    expires_at: Option<DateTime<Utc>>,
}

fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some(first) = bytes.first() else {
        return false;
    };
    bytes.len() <= 63
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
}

/// `90m`, `12h` or `30d`, at most [`MAX_LIFETIME_DAYS`].
fn lifetime(text: &str) -> Option<chrono::Duration> {
    let unit = text.chars().last()?;
    let n: i64 = text[..text.len() - unit.len_utf8()]
        .parse()
        .ok()
        .filter(|n| *n > 0)?;
    let d = match unit {
        'm' => chrono::Duration::try_minutes(n)?,
        'h' => chrono::Duration::try_hours(n)?,
        'd' => chrono::Duration::try_days(n)?,
        _ => return None,
    };
    (d <= chrono::Duration::days(MAX_LIFETIME_DAYS)).then_some(d)
}

/// `POST /api/tokens` `{name, role, expiresIn?|expiresAt?}` → 201 with the
/// token, shown this once.
#[utoipa::path(
    post,
    path = "/api/tokens",
    tag = "tokens",
    summary = "Make a token (shown once)",
    request_body(content = CreateBody, content_type = "application/json"),
    responses((status = 201, body = tokens::Made), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Body(body): Body<SMALL_LIMIT>,
) -> ApiResult<(StatusCode, Json<tokens::Made>)> {
    let body: CreateBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?;
    if !valid_name(&body.name) {
        return Err(ApiError::field(
            "name",
            "must be 1..63 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit",
        ));
    }
    let now = Utc::now();
    let expires_at = match (body.expires_in.as_deref(), body.expires_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "expiresIn",
                "give expiresIn or expiresAt, not both",
            ));
        }
        (Some(text), None) => Some(
            lifetime(text)
                .and_then(|d| now.checked_add_signed(d))
                .ok_or_else(|| {
                    ApiError::field(
                        "expiresIn",
                        format!("must be like 90m, 12h or 30d, at most {MAX_LIFETIME_DAYS}d"),
                    )
                })?,
        ),
        (None, Some(at)) if at <= now => {
            return Err(ApiError::field("expiresAt", "must be in the future"));
        }
        (None, Some(at)) if at > now + chrono::Duration::days(MAX_LIFETIME_DAYS) => {
            return Err(ApiError::field(
                "expiresAt",
                format!("must be within {MAX_LIFETIME_DAYS} days"),
            ));
        }
        (None, at) => at,
    };
    let token = new_api_token();
    let id = uuid::Uuid::now_v7().to_string();
    let mut conn = state.pool.acquire().await?;
    let made = tokens::create(
        &mut conn,
        &NewToken {
            id: &id,
            name: &body.name,
            role: body.role,
            hash: &token_hash(&token),
            created_by: &by.name,
            expires_at,
        },
    )
    .await?
    .ok_or_else(|| ApiError::ConflictOn {
        message: format!("a token named {} exists already", body.name),
        field: "name".into(),
    })?;
    tracing::info!(token.name = %made.name, role = made.role.as_str(), by = %by.name, "api token created");
    Ok((
        StatusCode::CREATED,
        Json(tokens::Made {
            record: made,
            token,
        }),
    ))
}

/// `GET /api/tokens`: every token, never a secret.
#[utoipa::path(
    get,
    path = "/api/tokens",
    tag = "tokens",
    summary = "API tokens",
    responses((status = 200, body = Vec<tokens::Token>), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<tokens::Token>>> {
    let mut conn = state.pool.acquire().await?;
    Ok(Json(tokens::list(&mut conn).await?))
}

/// `DELETE /api/tokens/{name}` (or its id): revoked at once, kept listed.
#[utoipa::path(
    delete,
    path = "/api/tokens/{name}",
    tag = "tokens",
    summary = "Revoke a token",
    params(("name" = String, Path, description = "token name or id")),
    responses((status = 200, body = tokens::Token), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<tokens::Token>> {
    let mut conn = state.pool.acquire().await?;
    let revoked = tokens::revoke(&mut conn, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no token named {name}")))?;
    tracing::info!(token.name = %revoked.name, by = %by.name, "api token revoked");
    Ok(Json(revoked))
}

#[cfg(test)]
mod tests {
    #[test]
    fn lifetimes_are_minutes_hours_or_days_and_bounded() {
        assert_eq!(super::lifetime("90m"), Some(chrono::Duration::minutes(90)));
        assert_eq!(super::lifetime("30d"), Some(chrono::Duration::days(30)));
        for bad in [
            "",
            "d",
            "0d",
            "-1d",
            "10y",
            "99999999999999999999d",
            "3651d",
            "1é",
            "é",
        ] {
            assert_eq!(super::lifetime(bad), None, "{bad}");
        }
    }
}
