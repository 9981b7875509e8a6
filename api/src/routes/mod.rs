//! One file per route group.

pub mod apps;
pub mod changes;
pub mod checks;
pub mod cluster;
pub mod cron;
pub mod deployments;
pub mod forge;
pub mod functions;
pub mod health;
pub mod logs;
pub mod previews;
pub mod queueing;
pub mod rollback;
pub mod secrets;
pub mod snapshots;
pub mod tokens;
pub mod webhook_deliveries;
pub mod webhooks;
pub mod ws;

use axum::Router;
use axum::routing::{any, get, post, put};

use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    // Routes that answer at once, under NORN_REQUEST_TIMEOUT.
    let bounded = Router::new()
        .route("/api/health", get(health::health))
        .route("/api/openapi.json", get(crate::openapi::document))
        .route("/api/apps", get(apps::list).post(apps::register))
        .route("/api/apps/{id}", get(apps::get))
        .route("/api/apps/{id}/deploy", post(deployments::deploy))
        .route("/api/apps/{id}/rollback", post(rollback::rollback))
        .route("/api/apps/{id}/forge", get(forge::get).post(forge::forge))
        .route("/api/apps/{id}/teardown", post(forge::teardown))
        .route(
            "/api/apps/{id}/secrets",
            get(secrets::list).put(secrets::put),
        )
        .route(
            "/api/apps/{id}/secrets/{name}",
            axum::routing::delete(secrets::delete),
        )
        .route("/api/secrets/rotate", post(secrets::rotate))
        .route("/api/apps/{id}/snapshots", get(snapshots::list))
        .route(
            "/api/apps/{id}/snapshots/{ts}/restore",
            post(snapshots::restore),
        )
        .route("/api/apps/{id}/changes", get(changes::list))
        .route("/api/apps/{id}/changes/runs/{run}", get(changes::get))
        .route("/api/apps/{id}/changes/run", post(changes::run))
        .route("/api/apps/{id}/changes/dry-run", post(changes::dry_run))
        .route("/api/apps/{id}/changes/check", post(changes::check))
        .route("/api/apps/{id}/changes/rewind", post(changes::rewind))
        .route(
            "/api/apps/{id}/changes/{name}/revert",
            post(changes::revert),
        )
        .route("/api/apps/{id}/cron", get(cron::get))
        .route("/api/apps/{id}/cron/trigger", post(cron::trigger))
        .route("/api/apps/{id}/cron/pause", post(cron::pause))
        .route("/api/apps/{id}/cron/resume", post(cron::resume))
        .route("/api/apps/{id}/cron/schedule", put(cron::set_schedule))
        .route("/api/apps/{id}/health-checks", get(checks::list))
        .route("/api/apps/{id}/previews", get(previews::list))
        .route("/api/apps/{id}/functions/executions", get(functions::list))
        .route("/api/functions/executions/{id}", get(functions::get))
        .route(
            "/api/functions/executions/{id}/cancel",
            post(functions::cancel),
        )
        .route("/api/cluster/nodes", get(cluster::list))
        .route("/api/cluster/nodes/{id}/drain", post(cluster::drain))
        .route("/api/deployments", get(deployments::list))
        .route("/api/deployments/{id}", get(deployments::get))
        .route("/api/deployments/{id}/events", get(deployments::events))
        .route("/api/deployments/{id}/cancel", post(deployments::cancel))
        .route("/api/tokens", get(tokens::list).post(tokens::create))
        .route("/api/tokens/{name}", axum::routing::delete(tokens::revoke))
        .route("/api/webhooks/github", post(webhooks::github))
        .route("/api/webhooks/gitea", post(webhooks::gitea))
        .route("/api/webhooks/gitlab", post(webhooks::gitlab))
        .route("/api/webhooks/deliveries", get(webhook_deliveries::list))
        .route(
            "/api/webhooks/deliveries/{id}",
            get(webhook_deliveries::get),
        )
        .route(
            "/api/webhooks/deliveries/{id}/replay",
            post(webhook_deliveries::replay),
        )
        .route(
            "/api/apps/{id}/webhook-secret",
            put(webhook_deliveries::put_secret).delete(webhook_deliveries::delete_secret),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http_policy::deadline,
        ));
    // Routes that stream or wait, each with a bound of its own.
    let long = Router::new()
        .route("/api/apps/{id}/invoke", any(functions::invoke))
        .route("/api/apps/{id}/invoke/{*path}", any(functions::invoke))
        .route("/api/deployments/{id}/logs", get(logs::logs))
        .route("/ws", get(ws::upgrade));
    bounded
        .merge(long)
        // After routing: the role a route needs is looked up by its pattern,
        // and an unknown path is a 404 for anyone.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_role,
        ))
        .fallback(|| async { crate::error::ApiError::NotFound("no such route".into()) })
        // Outermost: a refused origin never reaches auth or a handler.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http_policy::origins_and_headers,
        ))
        .with_state(state)
}
