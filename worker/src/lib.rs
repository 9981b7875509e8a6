//! norn-worker: claims jobs from the Postgres queues and runs them.

pub mod adapters;
pub mod jobs;
pub mod pipeline;
pub mod state;
pub mod steps;
pub mod supervisor;

use std::sync::Arc;

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
    let state = Arc::new(state::WorkerState::new(pool, config).await?);
    tracing::info!(token = %state.token, "worker ready");
    tokio::join!(
        supervisor::deploy_queue(state.clone(), shutdown.clone()),
        supervisor::cron_queue(state.clone(), shutdown.clone()),
        supervisor::health_queue(state, shutdown),
    );
    Ok(())
}
