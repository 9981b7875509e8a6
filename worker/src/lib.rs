//! norn-worker: claims jobs from the Postgres queues and runs them.

pub mod adapters;
pub mod forge;
pub mod invocations;
pub mod jobs;
pub mod pipeline;
pub mod preview;
mod route_refresh;
pub mod services;
pub mod state;
pub mod steps;
pub mod supervisor;
pub mod warm;

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use norn_shared::Config;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Db(#[from] norn_shared::db::DbError),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Runtime(#[from] adapters::docker::RuntimeError),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Apps(#[from] norn_shared::db::apps::AppError),
    /// A step met trouble of Norn's own (its database); the job is retried.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// This worker lost the app lease; another one owns the deployment now.
    #[error("the app lease passed to another worker")]
    Fenced,
}

/// Runs the worker role until `shutdown` turns true.
pub async fn run(
    pool: sqlx::PgPool,
    config: Config,
    shutdown: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    // Set up (Docker reachable, app network made) before registering as ready.
    let running = Arc::default();
    let node_id = norn_shared::registry::new_node_id();
    let state = state::WorkerState::new(
        pool.clone(),
        config.clone(),
        Arc::clone(&running),
        node_id.clone(),
    )
    .await?;
    let state = Arc::new(state);
    let membership = norn_shared::registry::join_counting(
        pool,
        &config,
        "worker",
        shutdown.clone(),
        running,
        Some(state.engine_probe.clone()),
        node_id,
    );
    tracing::info!(token = %state.token, node.id = %membership.id, "worker ready");
    // Draining stops the queue workers (no new claims); handlers already
    // running are on their own tasks and finish.
    let stop = stop_on_shutdown_or_drain(shutdown.clone(), membership.draining.clone());
    // Each role with its own waker: under one `join!` every wake-up of any
    // role polls all of them, and an apalis worker polled without cause
    // fetches from the database each time (an idle worker then spun).
    // Not spawned: apalis' handler types are not `Send` for every lifetime.
    let mut roles: FuturesUnordered<std::pin::Pin<Box<dyn Future<Output = ()>>>> =
        FuturesUnordered::new();
    roles.push(Box::pin(supervisor::deploy_queue(
        state.clone(),
        stop.clone(),
    )));
    roles.push(Box::pin(supervisor::cron_queue(
        state.clone(),
        stop.clone(),
    )));
    roles.push(Box::pin(supervisor::snapshot_queue(
        state.clone(),
        stop.clone(),
    )));
    roles.push(Box::pin(supervisor::changes_queue(
        state.clone(),
        stop.clone(),
    )));
    roles.push(Box::pin(supervisor::forge_queue(
        state.clone(),
        stop.clone(),
    )));
    roles.push(Box::pin(supervisor::health_queue(
        state.clone(),
        stop.clone(),
    )));
    roles.push(Box::pin(supervisor::function_queue(
        state.clone(),
        stop.clone(),
    )));
    roles.push(Box::pin(invocations::listen_for_cancels(
        state.clone(),
        stop.clone(),
    )));
    roles.push(Box::pin(invocations::janitor(state.clone(), stop.clone())));
    roles.push(Box::pin(route_refresh::run(state.clone(), stop)));
    while roles.next().await.is_some() {}
    // Nothing will take them now.
    state
        .warm
        .close(&state, std::time::Duration::from_secs(30))
        .await;
    let mut shutdown = shutdown;
    let _ = shutdown.wait_for(|s| *s).await;
    membership.leave().await;
    Ok(())
}

fn stop_on_shutdown_or_drain(
    mut shutdown: watch::Receiver<bool>,
    mut draining: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {}
            _ = draining.wait_for(|d| *d) => {}
        }
        let _ = tx.send(true);
        // Keep the sender alive so receivers see `true`, not a closed channel.
        let _ = shutdown.wait_for(|s| *s).await;
    });
    rx
}
