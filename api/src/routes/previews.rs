//! Preview environments: `GET /api/apps/{id}/previews`, and what a pull
//! request's webhook does ([`prepare`] a preview for a deploy, [`close`]
//! one). A preview is an app of its own (`norn_shared::preview`); tearing
//! it down is a forge job (`RemovePreview`) under the preview's app lease,
//! recorded in the saga `preview:<app>`.

use axum::Json;
use axum::extract::{Path, State};
use norn_shared::db::apps::{self, App};
use norn_shared::db::previews::{self, NewPreview, Preview};
use norn_shared::infraspec::InfraSpec;
use sqlx::PgConnection;

use super::apps::app_id;
use super::queueing;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/api/apps/{id}/previews",
    tag = "previews",
    summary = "Preview environments of the app",
    params(("id" = String, Path, description = "app name")),
    responses((status = 200, body = Vec<norn_shared::db::previews::Preview>), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Preview>>> {
    let app = app_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    if apps::get(&mut conn, app.as_str())
        .await
        .map_err(super::apps::invalid_spec)?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("app {app} is not registered")));
    }
    Ok(Json(previews::of_parent(&mut conn, app.as_str()).await?))
}

/// A pull request to deploy as a preview of `parent`.
pub struct Request<'a> {
    pub number: u64,
    pub commit: &'a str,
    pub branch: &'a str,
    pub actor: &'a str,
}

/// Registers (or updates) the preview app of a pull request of `parent`,
/// locked, in the caller's transaction, and tears down the previews beyond
/// the parent's `max`. The caller queues the deploy.
pub async fn prepare(tx: &mut PgConnection, parent: &App, req: &Request<'_>) -> ApiResult<App> {
    let settings = parent
        .spec
        .previews
        .as_ref()
        .ok_or_else(|| ApiError::Conflict(format!("app {} has no previews", parent.id)))?;
    let name =
        norn_shared::preview::app_name(&parent.id, req.number).map_err(ApiError::Conflict)?;
    let parent_doc = apps::document(tx, &parent.id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("app {} is not registered", parent.id)))?;
    let doc = norn_shared::preview::document(&parent_doc, &name, req.number, req.branch);
    let spec = InfraSpec::from_json(doc.clone()).map_err(|e| {
        ApiError::Conflict(format!("the spec of preview {name} does not validate: {e}"))
    })?;
    apps::register(tx, &spec, &doc, "preview", None)
        .await
        .map_err(|e| ApiError::Conflict(format!("preview {name}: {e}")))?;
    let recorded = previews::upsert(
        tx,
        &NewPreview {
            app: name.as_str(),
            parent: &parent.id,
            number: req.number as i64,
            head_sha: req.commit,
            head_branch: req.branch,
            ttl_secs: settings.ttl.as_secs() as i64,
            opened_by: req.actor,
        },
    )
    .await?;
    if recorded.is_none() {
        return Err(ApiError::Conflict(format!(
            "preview {name} is being torn down; push again once it is gone"
        )));
    }
    let preview = queueing::lock_app(tx, name.as_str()).await?;
    for older in previews::beyond(tx, &parent.id, settings.max).await? {
        let why = format!(
            "app {} keeps at most {} previews (previews.max)",
            parent.id, settings.max
        );
        begin_teardown(tx, &older, &why, req.actor).await?;
    }
    Ok(preview)
}

async fn begin_teardown(
    tx: &mut PgConnection,
    app: &str,
    reason: &str,
    actor: &str,
) -> ApiResult<bool> {
    norn_shared::preview::begin_teardown(tx, app, reason, actor)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))
}

/// A pull request of `parent` closed (or merged): its preview goes.
pub async fn close(
    tx: &mut PgConnection,
    parent: &str,
    number: u64,
    actor: &str,
) -> ApiResult<Option<String>> {
    let name = norn_shared::preview::app_name(parent, number).map_err(ApiError::Conflict)?;
    let why = format!("pull request #{number} closed");
    Ok(begin_teardown(tx, name.as_str(), &why, actor)
        .await?
        .then(|| name.as_str().to_owned()))
}
