//! One file per route group.

pub mod apps;
pub mod deployments;
pub mod health;
pub mod ws;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/health", get(health::health))
        .route("/api/apps", get(apps::list).post(apps::register))
        .route("/api/apps/{id}", get(apps::get))
        .route("/api/apps/{id}/deploy", post(deployments::deploy))
        .route("/api/deployments", get(deployments::list))
        .route("/api/deployments/{id}", get(deployments::get))
        .route("/api/deployments/{id}/events", get(deployments::events))
        .route("/ws", get(ws::upgrade))
        .fallback(|| async { crate::error::ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_token,
        ))
        .with_state(state)
}
