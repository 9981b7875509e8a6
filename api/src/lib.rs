//! norn-api: the HTTP API, `/ws` live events and the app ingress.

pub mod auth;
pub mod body;
pub mod error;
pub mod ingress;
pub mod listener;
pub mod routes;
pub mod state;

use std::sync::Arc;

use norn_shared::Config;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

pub use state::AppState;

/// Binds the configured ports and serves until `shutdown` turns true.
pub async fn run(
    pool: sqlx::PgPool,
    config: Config,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let api = TcpListener::bind((config.bind_addr, config.port)).await?;
    let ingress = if config.ingress_port == 0 {
        None
    } else {
        Some(TcpListener::bind((config.bind_addr, config.ingress_port)).await?)
    };
    serve(pool, config, api, ingress, shutdown).await
}

/// Serves on already-bound listeners (tests bind port 0).
pub async fn serve(
    pool: sqlx::PgPool,
    config: Config,
    api: TcpListener,
    ingress: Option<TcpListener>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    auth::check_exposure(&config, api.local_addr()?)?;
    match routes::apps::register_dir(&pool, &config.apps_dir).await {
        Ok(n) => {
            tracing::info!(count = n, dir = %config.apps_dir.display(), "registered apps from NORN_APPS_DIR")
        }
        Err(e) => tracing::warn!(error = %e, "could not register apps from NORN_APPS_DIR"),
    }
    let membership = norn_shared::registry::join(pool.clone(), &config, "api", shutdown.clone());
    let (events, _) = broadcast::channel(1024);
    let state = AppState {
        pool: pool.clone(),
        config: Arc::new(config),
        events: events.clone(),
        routes: ingress::RouteTable::default(),
    };
    let listener_task = tokio::spawn(listener::run(pool, events, state.routes.clone()));
    tracing::info!(addr = %api.local_addr()?, "api listening");
    let ingress_task = ingress.map(|l| {
        let app = ingress::router(state.routes.clone());
        let stop = norn_shared::shutdown::wait(shutdown.clone());
        tracing::info!(addr = ?l.local_addr(), "ingress listening");
        tokio::spawn(async move { axum::serve(l, app).with_graceful_shutdown(stop).await })
    });
    let result = axum::serve(api, routes::router(state))
        .with_graceful_shutdown(norn_shared::shutdown::wait(shutdown))
        .await;
    listener_task.abort();
    if let Some(t) = ingress_task {
        let _ = t.await;
    }
    membership.leave().await;
    result
}
