//! App secrets: `GET /api/apps/{id}/secrets` (names and update times, never
//! values), `PUT /api/apps/{id}/secrets {NAME: value, …}` (merges),
//! `DELETE /api/apps/{id}/secrets/{name}`; `POST /api/secrets/rotate`
//! re-seals every stored value with the current key.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::db::{apps, secrets};
use serde_json::json;

use super::apps::app_id;
use crate::auth::Principal;
use crate::body::{Body, SMALL_LIMIT};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Secrets per app (the infraspec's `secrets` list has the same bound).
const MAX_SECRETS: i64 = 100;
/// One value's size.
const MAX_VALUE: usize = 32 * 1024;
/// Names Norn sets itself in every container.
const RESERVED: [&str; 7] = [
    "DATABASE_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_TOPICS",
    "KAFKA_TOPIC_PREFIX",
    "KV_NAMESPACE",
    "PORT",
    "REDIS_URL",
];

async fn registered(conn: &mut sqlx::PgConnection, id: &str) -> ApiResult<String> {
    let id = app_id(id)?;
    apps::get(conn, id.as_str())
        .await
        .map_err(super::apps::invalid_spec)?
        .ok_or_else(|| ApiError::NotFound(format!("app {id} is not registered")))?;
    Ok(id.as_str().to_owned())
}

fn no_key(e: norn_shared::crypto::CryptoError) -> ApiError {
    ApiError::Conflict(e.to_string())
}

#[utoipa::path(
    get,
    path = "/api/apps/{id}/secrets",
    tag = "secrets",
    summary = "Secret names and update times",
    params(("id" = String, Path, description = "app name")),
    responses((status = 200, body = Vec<secrets::SecretName>), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<secrets::SecretName>>> {
    let mut conn = state.pool.acquire().await?;
    let app = registered(&mut conn, &id).await?;
    Ok(Json(secrets::names(&mut conn, &app).await?))
}

/// Why `name` cannot be a secret's name, if it cannot.
fn bad_name(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Some("secret names match ^[A-Z_][A-Z0-9_]*$ (at most 255 characters)".into());
    }
    if RESERVED.contains(&name) || name.starts_with("NORN_") {
        return Some(format!("{name} is set by Norn itself"));
    }
    None
}

#[utoipa::path(
    put,
    path = "/api/apps/{id}/secrets",
    tag = "secrets",
    summary = "Set secret values",
    params(("id" = String, Path, description = "app name")),
    request_body(content = std::collections::BTreeMap<String, String>, content_type = "application/json"),
    responses((status = 200, body = secrets::SecretsSet), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn put(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
    Body(body): Body<SMALL_LIMIT>,
) -> ApiResult<Json<secrets::SecretsSet>> {
    let values: BTreeMap<String, String> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(format!(
            "the body must be an object of NAME: value strings: {e}"
        ))
    })?;
    if values.is_empty() {
        return Err(ApiError::bad("no secrets given"));
    }
    for (name, value) in &values {
        if let Some(why) = bad_name(name) {
            return Err(ApiError::field(name.clone(), why));
        }
        if value.len() > MAX_VALUE || value.contains('\0') {
            return Err(ApiError::field(
                name.clone(),
                format!("a value is at most {MAX_VALUE} bytes, without NUL"),
            ));
        }
    }
    let key = state.config.sealing_key().map_err(no_key)?;
    let mut tx = state.pool.begin().await?;
    let app = registered(&mut tx, &id).await?;
    for (name, value) in &values {
        let sealed = key
            .seal(value)
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        secrets::put(&mut tx, &app, name, &sealed).await?;
    }
    let count = secrets::count(&mut tx, &app).await?;
    if count > MAX_SECRETS {
        return Err(ApiError::bad(format!(
            "an app has at most {MAX_SECRETS} secrets (this would make {count})"
        )));
    }
    let names: Vec<&String> = values.keys().collect();
    trail(&by, &mut tx, &app, "secrets.set", &names).await?;
    tx.commit().await?;
    tracing::info!(app = %app, names = ?names, "secrets set");
    Ok(Json(secrets::SecretsSet {
        app,
        set: names.into_iter().cloned().collect(),
    }))
}

#[utoipa::path(
    delete,
    path = "/api/apps/{id}/secrets/{name}",
    tag = "secrets",
    summary = "Remove a secret",
    params(("id" = String, Path, description = "app name"), ("name" = String, Path, description = "secret name")),
    responses((status = 204, description = "removed"), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let mut tx = state.pool.begin().await?;
    let app = registered(&mut tx, &id).await?;
    if !secrets::delete(&mut tx, &app, &name).await? {
        return Err(ApiError::NotFound(format!(
            "app {app} has no secret {name}"
        )));
    }
    trail(&by, &mut tx, &app, "secrets.unset", &[&name]).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Names only: the values never reach the saga.
async fn trail(
    by: &Principal,
    tx: &mut sqlx::PgConnection,
    app: &str,
    action: &str,
    names: &[&String],
) -> Result<(), sqlx::Error> {
    let list: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    saga::append(
        tx,
        NewSagaEvent {
            saga_id: &format!("secrets:{app}"),
            app,
            category: "secrets",
            action,
            step: None,
            message: &list.join(", "),
            actor: &by.name,
            metadata: json!({"names": list}),
        },
    )
    .await
}

/// Re-seals every value not sealed with the current key (opened with a key
/// from `NORN_SECRET_KEY_PREVIOUS`), in one transaction.
#[utoipa::path(
    post,
    path = "/api/secrets/rotate",
    tag = "secrets",
    summary = "Re-seal every stored value with the current key",
    responses((status = 200, body = secrets::Rotated), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn rotate(State(state): State<AppState>) -> ApiResult<Json<secrets::Rotated>> {
    let key = state.config.sealing_key().map_err(no_key)?;
    let mut tx = state.pool.begin().await?;
    let rows = secrets::sealed_with_other_keys(&mut tx, key.id()).await?;
    for row in &rows {
        let value = state.config.open_sealed(&row.sealed).map_err(|e| {
            ApiError::Conflict(format!(
                "{} of app {} is sealed with key {}, which is neither NORN_SECRET_KEY nor in \
                 NORN_SECRET_KEY_PREVIOUS: {e}",
                row.name, row.app, row.sealed.key_id
            ))
        })?;
        let sealed = key
            .seal(&value)
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        secrets::reseal(&mut tx, row, &sealed).await?;
    }
    tx.commit().await?;
    tracing::info!(
        resealed = rows.len(),
        key.id = key.id(),
        "sealed values rotated to the current key"
    );
    Ok(Json(secrets::Rotated {
        resealed: rows.len(),
        key_id: key.id().to_owned(),
    }))
}
