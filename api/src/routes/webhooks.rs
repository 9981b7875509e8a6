//! `POST /api/webhooks/{github,gitea,gitlab}`: git forges announce pushes
//! and pull requests. Open routes (a forge has no token): a delivery is
//! acted on only when it is signed with the webhook secret of the app it
//! names (its own, else `NORN_WEBHOOK_SECRET`). Every delivery is recorded,
//! one row per app it concerns; a rejected one keeps no payload, and its
//! answer says nothing about which apps exist.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use norn_shared::db::apps::{self, App};
use norn_shared::db::webhooks::{self, DeliveryStatus, NewDelivery};
use norn_shared::domain::GitRef;
use norn_shared::webhook::{self, Delivery, Outcome, Provider, repo_url};
use serde::Serialize;
use serde_json::json;

use super::queueing;
use crate::body::{Body, WEBHOOK_LIMIT};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// What became of a delivery for one app.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Handled {
    /// The delivery's row (`GET /api/webhooks/deliveries/{id}`).
    pub id: String,
    pub app: Option<String>,
    pub status: DeliveryStatus,
    pub reason: Option<String>,
    pub deployment_id: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub delivery_id: String,
    pub event: String,
    pub deliveries: Vec<Handled>,
}

/// What a rejected delivery is told: nothing about apps or secrets.
const REJECTED: &str = "the delivery is not signed with the webhook secret";

#[utoipa::path(
    post,
    path = "/api/webhooks/github",
    tag = "webhooks",
    summary = "A GitHub delivery",
    request_body(content = serde_json::Value, content_type = "application/json", description = "the forge payload, signed"),
    responses((status = 202, body = Answer), crate::openapi::Errors),
    security(()),
)]
pub async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body<WEBHOOK_LIMIT>,
) -> ApiResult<(StatusCode, Json<Answer>)> {
    receive(&state, Provider::Github, &headers, &body).await
}

#[utoipa::path(
    post,
    path = "/api/webhooks/gitea",
    tag = "webhooks",
    summary = "A Gitea delivery",
    request_body(content = serde_json::Value, content_type = "application/json", description = "the forge payload, signed"),
    responses((status = 202, body = Answer), crate::openapi::Errors),
    security(()),
)]
pub async fn gitea(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body<WEBHOOK_LIMIT>,
) -> ApiResult<(StatusCode, Json<Answer>)> {
    receive(&state, Provider::Gitea, &headers, &body).await
}

#[utoipa::path(
    post,
    path = "/api/webhooks/gitlab",
    tag = "webhooks",
    summary = "A GitLab delivery",
    request_body(content = serde_json::Value, content_type = "application/json", description = "the forge payload, signed"),
    responses((status = 202, body = Answer), crate::openapi::Errors),
    security(()),
)]
pub async fn gitlab(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body<WEBHOOK_LIMIT>,
) -> ApiResult<(StatusCode, Json<Answer>)> {
    receive(&state, Provider::Gitlab, &headers, &body).await
}

/// One delivery as it arrived: the bytes its signature covers.
struct Incoming<'a> {
    provider: Provider,
    signature: Option<&'a str>,
    body: &'a [u8],
    delivery_id: String,
    event: String,
}

async fn receive(
    state: &AppState,
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<(StatusCode, Json<Answer>)> {
    let incoming = Incoming {
        provider,
        signature: headers
            .get(provider.signature_header())
            .and_then(|v| v.to_str().ok()),
        body,
        delivery_id: webhook::delivery_id(provider, headers, body),
        event: webhook::event_name(provider, headers),
    };
    let delivery = match webhook::parse(provider, headers, body) {
        Ok(d) => d,
        // Which app it is for is unknown: only the global secret can vouch
        // for it. Signed, it is a forge's payload Norn cannot read: 400.
        Err(e) => {
            let row = unmatched(state, &incoming, &e.to_string()).await?;
            return match row.status {
                DeliveryStatus::Rejected => Err(ApiError::Forbidden(REJECTED.into())),
                _ => Err(ApiError::bad(format!(
                    "delivery {}: {e}",
                    incoming.delivery_id
                ))),
            };
        }
    };
    let apps = apps_for(state, &delivery).await?;
    let mut handled = Vec::new();
    if apps.is_empty() {
        let first = delivery.repo_urls.first().cloned().unwrap_or_default();
        let why = format!("no registered app deploys repository {first}");
        handled.push(unmatched(state, &incoming, &why).await?);
    }
    for app in &apps {
        handled.push(for_app(state, &incoming, &delivery, app).await?);
    }
    if handled.iter().all(|h| h.status == DeliveryStatus::Rejected) {
        return Err(ApiError::Forbidden(REJECTED.into()));
    }
    let status = if handled
        .iter()
        .any(|h| h.status == DeliveryStatus::Deploying)
    {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Answer {
            delivery_id: incoming.delivery_id,
            event: incoming.event,
            deliveries: handled,
        }),
    ))
}

/// Registered apps whose `repo.url` is the delivery's repository.
async fn apps_for(state: &AppState, delivery: &Delivery) -> ApiResult<Vec<App>> {
    let keys: BTreeSet<String> = delivery
        .repo_urls
        .iter()
        .filter_map(|u| repo_url::key(u))
        .collect();
    let mut conn = state.pool.acquire().await?;
    Ok(apps::list(&mut conn)
        .await?
        .into_iter()
        .filter_map(Result::ok)
        .filter(|app| {
            app.spec
                .repo
                .as_ref()
                .and_then(|r| repo_url::key(&r.url))
                .is_some_and(|k| keys.contains(&k))
        })
        .collect())
}

/// The secret `app`'s deliveries must be signed with, if any.
async fn secret_of(state: &AppState, app: &str) -> ApiResult<Option<String>> {
    let mut conn = state.pool.acquire().await?;
    match webhooks::secret(&mut conn, app).await? {
        Some(sealed) => Ok(Some(
            state
                .config
                .open_sealed(&sealed)
                .map_err(|e| ApiError::Internal(Box::new(e)))?,
        )),
        None => Ok(state
            .config
            .webhook_secret
            .as_ref()
            .map(|s| s.expose().to_owned())),
    }
}

/// Why `incoming` is not signed with `secret`; `None` when it is.
fn refusal(incoming: &Incoming<'_>, secret: Option<&str>, whose: &str) -> Option<String> {
    let Some(secret) = secret else {
        return Some(format!(
            "no webhook secret for {whose}: set NORN_WEBHOOK_SECRET or the app's own \
             (PUT /api/apps/{{id}}/webhook-secret)"
        ));
    };
    webhook::verify(incoming.provider, secret, incoming.signature, incoming.body)
        .err()
        .map(|e| e.to_string())
}

/// A delivery no app could be found for: acknowledged (`ignored`) only when
/// signed with the global secret.
async fn unmatched(state: &AppState, incoming: &Incoming<'_>, why: &str) -> ApiResult<Handled> {
    let global = state.config.webhook_secret.as_ref().map(|s| s.expose());
    let (status, reason) = match refusal(incoming, global, "deliveries that name no app") {
        Some(refused) => (DeliveryStatus::Rejected, format!("{refused} ({why})")),
        None => (DeliveryStatus::Ignored, why.to_owned()),
    };
    record(state, incoming, None, status, &reason, None, None).await
}

async fn for_app(
    state: &AppState,
    incoming: &Incoming<'_>,
    delivery: &Delivery,
    app: &App,
) -> ApiResult<Handled> {
    let secret = secret_of(state, &app.id).await?;
    if let Some(refused) = refusal(incoming, secret.as_deref(), &format!("app {}", app.id)) {
        tracing::warn!(app = %app.id, provider = %incoming.provider, delivery = %incoming.delivery_id, reason = %refused, "webhook delivery rejected");
        let reason = refused.as_str();
        return record(
            state,
            incoming,
            Some(&app.id),
            DeliveryStatus::Rejected,
            reason,
            None,
            None,
        )
        .await;
    }
    let Some(repo) = &app.spec.repo else {
        return Err(ApiError::Internal("matched an app without a repo".into()));
    };
    let change = Some(&delivery.change);
    let previews = app.spec.previews.is_some();
    match webhook::decide(&delivery.change, &delivery.event, &app.id, repo, previews) {
        Outcome::Ignore(why) => {
            record(
                state,
                incoming,
                Some(&app.id),
                DeliveryStatus::Ignored,
                &why,
                change,
                None,
            )
            .await
        }
        Outcome::Deploy { commit } => deploy(state, incoming, delivery, app, &commit, None).await,
        Outcome::Preview {
            number,
            commit,
            branch,
        } => {
            deploy(
                state,
                incoming,
                delivery,
                app,
                &commit,
                Some((number, &branch)),
            )
            .await
        }
        Outcome::ClosePreview { number } => {
            close_preview(state, incoming, delivery, app, number).await
        }
    }
}

/// A closed (or merged) pull request: its preview is torn down.
async fn close_preview(
    state: &AppState,
    incoming: &Incoming<'_>,
    delivery: &Delivery,
    app: &App,
    number: u64,
) -> ApiResult<Handled> {
    let actor = format!("webhook:{}", incoming.provider);
    let mut tx = state.pool.begin().await?;
    let closed = super::previews::close(&mut tx, &app.id, number, &actor).await?;
    tx.commit().await?;
    let (status, why) = match closed {
        Some(preview) => (
            DeliveryStatus::TearingDown,
            format!("pull request #{number} closed: tearing down preview {preview}"),
        ),
        None => (
            DeliveryStatus::Ignored,
            format!("pull request #{number} closed; it has no active preview"),
        ),
    };
    let change = Some(&delivery.change);
    record(state, incoming, Some(&app.id), status, &why, change, None).await
}

/// Queues the deploy of `commit` and records the delivery that caused it,
/// in one transaction. A redelivery finds the deployment the first one
/// queued (its idempotency key is the delivery's id) and queues nothing.
/// `preview`: (pull request, branch) when the commit is deployed as that
/// pull request's preview of `app` rather than as `app`.
async fn deploy(
    state: &AppState,
    incoming: &Incoming<'_>,
    delivery: &Delivery,
    app: &App,
    commit: &str,
    preview: Option<(u64, &str)>,
) -> ApiResult<Handled> {
    let git_ref = GitRef::parse(commit).map_err(ApiError::bad)?;
    let actor = format!("webhook:{}", incoming.provider);
    let key = format!("webhook:{}:{}", incoming.provider, incoming.delivery_id);
    let change = Some(&delivery.change);
    let mut tx = state.pool.begin().await?;
    let registered = queueing::lock_app(&mut tx, &app.id).await?;
    let target = match preview {
        None => Ok(registered),
        Some((number, branch)) => {
            let req = super::previews::Request {
                number,
                commit,
                branch,
                actor: &actor,
            };
            super::previews::prepare(&mut tx, &registered, &req).await
        }
    };
    let queued = match target {
        Ok(target) => {
            queueing::queue_deploy(
                &mut tx,
                &target,
                &queueing::DeployRequest {
                    git_ref: &git_ref,
                    idempotency_key: Some(&key),
                    actor: &actor,
                    max_queued: state.config.max_queued_per_app,
                    metadata: json!({"ref": git_ref, "delivery": incoming.delivery_id, "event": incoming.event}),
                },
            )
            .await
        }
        Err(e) => Err(e),
    };
    let queued = match queued {
        Ok(q) => q,
        // A full queue (`fifo` apps), or a preview that cannot be made (its
        // name or database taken, being torn down) is not the forge's
        // fault: recorded, so an admin can replay it later.
        Err(ApiError::TooMany { message, .. } | ApiError::Conflict(message)) => {
            tx.rollback().await?;
            let why = format!("not deployed: {message}");
            return record(
                state,
                incoming,
                Some(&app.id),
                DeliveryStatus::Ignored,
                &why,
                change,
                None,
            )
            .await;
        }
        Err(e) => return Err(e),
    };
    let id = norn_shared::domain::new_deployment_id();
    let reason = match preview {
        None => format!("deploying commit {commit}"),
        Some((number, _)) => {
            format!("deploying commit {commit} as the preview of pull request #{number}")
        }
    };
    // Two guards against a redelivery deploying again: the deployment's
    // idempotency key, and the deliveries' unique index (which also holds
    // when two copies arrive at once).
    let fresh = queued.created
        && webhooks::insert(
            &mut tx,
            &NewDelivery {
                id: &id,
                provider: incoming.provider,
                delivery_id: &incoming.delivery_id,
                event: &incoming.event,
                app: Some(&app.id),
                status: DeliveryStatus::Deploying,
                reason: Some(&reason),
                change,
                deployment_id: Some(&queued.id),
                replay_of: None,
                actor: &actor,
            },
        )
        .await?;
    if !fresh {
        tx.rollback().await?;
        let mut conn = state.pool.acquire().await?;
        let earlier =
            webhooks::deployed_by(&mut conn, incoming.provider, &incoming.delivery_id, &app.id)
                .await?
                .and_then(|d| d.deployment_id)
                .unwrap_or(queued.id);
        let why = format!(
            "redelivery: delivery {} already queued deployment {earlier}",
            incoming.delivery_id
        );
        return record(
            state,
            incoming,
            Some(&app.id),
            DeliveryStatus::Ignored,
            &why,
            change,
            Some(&earlier),
        )
        .await;
    }
    tx.commit().await?;
    tracing::info!(app = %app.id, deployment.id = %queued.id, provider = %incoming.provider, delivery = %incoming.delivery_id, %commit, "webhook deploy queued");
    Ok(Handled {
        id,
        app: Some(app.id.clone()),
        status: DeliveryStatus::Deploying,
        reason: Some(reason),
        deployment_id: Some(queued.id),
    })
}

async fn record(
    state: &AppState,
    incoming: &Incoming<'_>,
    app: Option<&str>,
    status: DeliveryStatus,
    reason: &str,
    change: Option<&webhook::Change>,
    deployment_id: Option<&str>,
) -> ApiResult<Handled> {
    let id = norn_shared::domain::new_deployment_id();
    let mut conn = state.pool.acquire().await?;
    webhooks::insert(
        &mut conn,
        &NewDelivery {
            id: &id,
            provider: incoming.provider,
            delivery_id: &incoming.delivery_id,
            event: &incoming.event,
            app,
            status,
            reason: Some(reason),
            change,
            deployment_id,
            replay_of: None,
            actor: &format!("webhook:{}", incoming.provider),
        },
    )
    .await?;
    Ok(Handled {
        id,
        app: app.map(str::to_owned),
        status,
        reason: Some(reason.to_owned()),
        deployment_id: deployment_id.map(str::to_owned),
    })
}
