//! norn-api: the HTTP API, `/ws` live events and the app ingress.

pub mod auth;
pub mod body;
pub mod error;
pub mod http_policy;
pub mod ingress;
pub mod listener;
pub mod openapi;
pub mod routes;
pub mod state;

use std::sync::Arc;

use norn_shared::Config;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

pub use state::AppState;

/// Binds the configured ports (`0` leaves one out: compose runs the
/// ingress as a process of its own on the app network, and the API off it)
/// and serves until `shutdown` turns true.
pub async fn run(
    pool: sqlx::PgPool,
    config: Config,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let bind = |port: u16| async move {
        match port {
            0 => Ok(None),
            port => TcpListener::bind((config.bind_addr, port)).await.map(Some),
        }
    };
    let api = bind(config.port).await?;
    let ingress = bind(config.ingress_port).await?;
    serve(pool, config, api, ingress, shutdown).await
}

/// Serves on already-bound listeners (tests bind port 0).
pub async fn serve(
    pool: sqlx::PgPool,
    config: Config,
    api: Option<TcpListener>,
    ingress: Option<TcpListener>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    if api.is_none() && ingress.is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "NORN_PORT and NORN_INGRESS_PORT are both 0: nothing to serve",
        ));
    }
    if let Some(api) = &api {
        auth::check_exposure(&config, api.local_addr()?)?;
        match routes::apps::register_dir(&pool, &config.apps_dir).await {
            Ok(n) => {
                tracing::info!(count = n, dir = %config.apps_dir.display(), "registered apps from NORN_APPS_DIR")
            }
            Err(e) => tracing::warn!(error = %e, "could not register apps from NORN_APPS_DIR"),
        }
    }
    let role = if api.is_some() { "api" } else { "ingress" };
    let membership = norn_shared::registry::join(pool.clone(), &config, role, shutdown.clone());
    let (events, _) = broadcast::channel(1024);
    let state = AppState {
        pool: pool.clone(),
        config: Arc::new(config),
        events: events.clone(),
        routes: ingress::RouteTable::default(),
    };
    let listener_task = tokio::spawn(listener::run(pool, events, state.routes.clone()));
    let ingress_task = ingress.map(|l| {
        let app = ingress::router(state.routes.clone());
        let stop = norn_shared::shutdown::wait(shutdown.clone());
        tracing::info!(addr = ?l.local_addr(), "ingress listening");
        tokio::spawn(async move { axum::serve(l, app).with_graceful_shutdown(stop).await })
    });
    let result = match api {
        Some(api) => {
            tracing::info!(addr = %api.local_addr()?, "api listening");
            axum::serve(api, routes::router(state))
                .with_graceful_shutdown(norn_shared::shutdown::wait(shutdown))
                .await
        }
        None => Ok(()),
    };
    // Without the API, this waits for the ingress alone to stop.
    let ingress_result = match ingress_task {
        Some(t) => t.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        None => Ok(()),
    };
    listener_task.abort();
    membership.leave().await;
    result.and(ingress_result)
}
