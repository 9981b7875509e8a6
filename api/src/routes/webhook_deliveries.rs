//! What admins do with webhooks: list deliveries (`GET
//! /api/webhooks/deliveries`, one), replay one (`POST
//! /api/webhooks/deliveries/{id}/replay`), and give an app a webhook secret
//! of its own (`PUT`/`DELETE /api/apps/{id}/webhook-secret`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use norn_shared::crypto::random_webhook_secret;
use norn_shared::db::webhooks::{self, DeliveryRow, DeliveryStatus, ListFilter, NewDelivery};
use norn_shared::domain::GitRef;
use norn_shared::webhook::{self, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::apps::app_id;
use super::queueing;
use crate::auth::Principal;
use crate::body::{Body, Query, SMALL_LIMIT, list_limit, optional_json};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    app: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/webhooks/deliveries",
    tag = "webhooks",
    summary = "Webhook deliveries",
    params(ListQuery),
    responses((status = 200, body = Vec<DeliveryRow>), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<DeliveryRow>>> {
    let app = q.app.as_deref().map(app_id).transpose()?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<DeliveryStatus>)
        .transpose()
        .map_err(|e| ApiError::field("status", e))?;
    let limit = list_limit(q.limit)?;
    let mut conn = state.pool.acquire().await?;
    let filter = ListFilter {
        app: app.as_ref().map(|a| a.as_str()),
        status,
        limit,
    };
    Ok(Json(webhooks::list(&mut conn, &filter).await?))
}

fn delivery_row_id(raw: &str) -> ApiResult<&str> {
    uuid::Uuid::parse_str(raw)
        .map(|_| raw)
        .map_err(|_| ApiError::field("id", "delivery ids are UUIDs"))
}

#[utoipa::path(
    get,
    path = "/api/webhooks/deliveries/{id}",
    tag = "webhooks",
    summary = "One delivery",
    params(("id" = String, Path, description = "delivery row id (UUID)")),
    responses((status = 200, body = DeliveryRow), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeliveryRow>> {
    let id = delivery_row_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    webhooks::get(&mut conn, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("delivery {id} not found")))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    /// The replay's own delivery row.
    pub id: String,
    pub replay_of: String,
    pub app: String,
    pub deployment_id: String,
}

/// Decides again, from what the verified delivery said and the app's spec
/// as it is now, and deploys when that says to. A rejected delivery was
/// never verified: it cannot be replayed (redeliver it from the forge).
#[utoipa::path(
    post,
    path = "/api/webhooks/deliveries/{id}/replay",
    tag = "webhooks",
    summary = "Replay a verified delivery",
    params(("id" = String, Path, description = "delivery row id (UUID)")),
    responses((status = 202, body = Replayed), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn replay(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Replayed>)> {
    let id = delivery_row_id(&id)?;
    let mut tx = state.pool.begin().await?;
    let original = webhooks::get(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("delivery {id} not found")))?;
    let (Some(app), Some(change)) = (&original.app, &original.change) else {
        return Err(ApiError::Conflict(format!(
            "delivery {id} was {}: only a verified delivery for an app can be replayed{}",
            status_word(original.status),
            if original.status == DeliveryStatus::Rejected {
                " (redeliver it from the forge once its secret is right)"
            } else {
                ""
            }
        )));
    };
    let registered = queueing::lock_app(&mut tx, app).await?;
    let Some(repo) = &registered.spec.repo else {
        return Err(ApiError::Conflict(format!(
            "app {app} no longer has a repo"
        )));
    };
    // Replays redeploy an app; previews follow their pull request's own
    // deliveries (a forge redelivery of one is acted on again).
    let commit = match webhook::decide(&change.0, &original.event, app, repo, false) {
        Outcome::Deploy { commit } => commit,
        Outcome::Ignore(why) => {
            return Err(ApiError::Conflict(format!(
                "replaying delivery {id} would deploy nothing: {why}"
            )));
        }
        Outcome::Preview { .. } | Outcome::ClosePreview { .. } => {
            return Err(ApiError::Conflict(format!(
                "delivery {id} is about a pull request: redeliver it from the forge"
            )));
        }
    };
    let git_ref = GitRef::parse(&commit).map_err(ApiError::bad)?;
    let actor = by.name.as_str();
    let queued = queueing::queue_deploy(
        &mut tx,
        &registered,
        &queueing::DeployRequest {
            git_ref: &git_ref,
            idempotency_key: None,
            actor,
            max_queued: state.config.max_queued_per_app,
            metadata: json!({"ref": git_ref, "replayOf": id, "delivery": original.delivery_id}),
        },
    )
    .await?;
    let row = norn_shared::domain::new_deployment_id();
    webhooks::insert(
        &mut tx,
        &NewDelivery {
            id: &row,
            provider: original.provider,
            delivery_id: &original.delivery_id,
            event: &original.event,
            app: Some(app),
            status: DeliveryStatus::Replayed,
            reason: Some(&format!("replayed by {actor}: deploying commit {commit}")),
            change: Some(&change.0),
            deployment_id: Some(&queued.id),
            replay_of: Some(id),
            actor,
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(app = %app, deployment.id = %queued.id, replay_of = %id, "webhook delivery replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(Replayed {
            id: row,
            replay_of: id.to_owned(),
            app: app.clone(),
            deployment_id: queued.id,
        }),
    ))
}

fn status_word(s: DeliveryStatus) -> &'static str {
    match s {
        DeliveryStatus::Received => "received",
        DeliveryStatus::Ignored => "ignored",
        DeliveryStatus::Rejected => "rejected",
        DeliveryStatus::Deploying => "deploying",
        DeliveryStatus::Replayed => "replayed",
        DeliveryStatus::TearingDown => "tearing_down",
    }
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    /// The forge's secret; absent: Norn makes one.
    secret: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretSet {
    pub app: String,
    /// The secret Norn made, shown this once (absent when the caller gave it).
    pub secret: Option<String>,
}

/// Forges store the secret as given: printable ASCII, long enough to resist
/// guessing, short enough for every forge's form.
fn valid_secret(s: &str) -> Result<(), &'static str> {
    if !(16..=256).contains(&s.len()) {
        return Err("must be 16..256 characters");
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces");
    }
    Ok(())
}

#[utoipa::path(
    put,
    path = "/api/apps/{id}/webhook-secret",
    tag = "webhooks",
    summary = "Set the app webhook secret",
    params(("id" = String, Path, description = "app name")),
    request_body(content = SecretBody, content_type = "application/json"),
    responses((status = 200, body = SecretSet), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn put_secret(
    State(state): State<AppState>,
    Extension(by): Extension<Principal>,
    Path(id): Path<String>,
    Body(body): Body<SMALL_LIMIT>,
) -> ApiResult<Json<SecretSet>> {
    let app = app_id(&id)?;
    let body: SecretBody = optional_json(&body)?;
    if let Some(s) = &body.secret {
        valid_secret(s).map_err(|e| ApiError::field("secret", e))?;
    }
    let key = state
        .config
        .sealing_key()
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    let made = body.secret.is_none();
    let secret = body.secret.unwrap_or_else(random_webhook_secret);
    let sealed = key
        .seal(&secret)
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let mut tx = state.pool.begin().await?;
    queueing::lock_app(&mut tx, app.as_str()).await?;
    webhooks::put_secret(&mut tx, app.as_str(), &sealed, &by.name).await?;
    tx.commit().await?;
    tracing::info!(app = %app, by = %by.name, "webhook secret set");
    Ok(Json(SecretSet {
        app: app.as_str().to_owned(),
        secret: made.then_some(secret),
    }))
}

#[utoipa::path(
    delete,
    path = "/api/apps/{id}/webhook-secret",
    tag = "webhooks",
    summary = "Remove the app webhook secret",
    params(("id" = String, Path, description = "app name")),
    responses((status = 204, description = "removed"), crate::openapi::Errors),
    security(("bearer" = ["admin"])),
)]
pub async fn delete_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let app = app_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    if !webhooks::delete_secret(&mut conn, app.as_str()).await? {
        return Err(ApiError::NotFound(format!(
            "app {app} has no webhook secret of its own"
        )));
    }
    tracing::info!(app = %app, "webhook secret removed");
    Ok(StatusCode::NO_CONTENT)
}
