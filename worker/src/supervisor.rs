//! Runs one apalis worker per queue and keeps it running: when Postgres
//! restarts or a connection dies, apalis' `run()` returns an error; we log it
//! and start a fresh worker under a fresh name (a reused name would hide a dead
//! worker's jobs from orphan recovery, see ARCHITECTURE.md).

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use norn_shared::jobs::{
    ChangesJob, CronJob, DeployJob, ForgeJob, FunctionJob, HealthJob, RestoreJob,
};
use norn_shared::queue::{self, Queue};
use tokio::sync::watch;

use crate::jobs;
use crate::state::WorkerState;

fn worker_name(state: &WorkerState, queue: Queue) -> String {
    format!(
        "{}-{}-{}",
        state.config.node_name,
        queue.name(),
        uuid::Uuid::new_v4().simple()
    )
}

async fn stopped(mut shutdown: watch::Receiver<bool>) -> Result<(), std::io::Error> {
    let _ = shutdown.wait_for(|stop| *stop).await;
    Ok(())
}

fn spawn_handler<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(f)
}

/// Runs one queue's apalis worker until `shutdown` turns true, restarting it
/// under a fresh name whenever it stops. A macro because apalis' builder types
/// (backend, handler) do not name well in a generic signature.
macro_rules! supervise {
    ($state:expr, $shutdown:expr, $job:ty, $queue:expr, $batch:expr, $handler:path) => {{
        let concurrency = $state.config.worker_concurrency;
        supervise!($state, $shutdown, $job, $queue, $batch, $handler, concurrency)
    }};
    ($state:expr, $shutdown:expr, $job:ty, $queue:expr, $batch:expr, $handler:path, $concurrency:expr) => {{
        let state: Arc<WorkerState> = $state;
        let shutdown: watch::Receiver<bool> = $shutdown;
        let mut backoff = Duration::from_millis(250);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let backend = PostgresStorage::<$job>::new(&state.pool)
                .with_config(queue::worker_config($queue, $batch))
                .with_pubsub();
            let name = worker_name(&state, $queue);
            let worker = WorkerBuilder::new(name.as_str())
                .backend(backend)
                .data(state.clone())
                .concurrency($concurrency)
                // Handlers run on their own tasks, so a worker restarted after a
                // database outage does not cancel jobs that are mid-flight.
                .parallelize(spawn_handler)
                .build($handler);
            tracing::info!(worker = %name, queue = $queue.name(), "queue worker started");
            match worker.run_until(stopped(shutdown.clone())).await {
                Ok(()) if *shutdown.borrow() => break,
                Ok(()) => tracing::warn!(worker = %name, "queue worker stopped; restarting"),
                Err(e) => {
                    tracing::warn!(worker = %name, error = %e, "queue worker failed; restarting")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }};
}

/// Deploys take seconds to minutes: claim one at a time so an idle worker
/// elsewhere takes the next.
pub async fn deploy_queue(state: Arc<WorkerState>, shutdown: watch::Receiver<bool>) {
    supervise!(
        state,
        shutdown,
        DeployJob,
        Queue::Deploy,
        1,
        jobs::deploy::run
    )
}

pub async fn cron_queue(state: Arc<WorkerState>, shutdown: watch::Receiver<bool>) {
    supervise!(state, shutdown, CronJob, Queue::Cron, 10, jobs::cron::run)
}

pub async fn health_queue(state: Arc<WorkerState>, shutdown: watch::Receiver<bool>) {
    supervise!(
        state,
        shutdown,
        HealthJob,
        Queue::Health,
        10,
        jobs::health::run
    )
}

/// Forges are rare and hold the app lease: one at a time per claim.
pub async fn forge_queue(state: Arc<WorkerState>, shutdown: watch::Receiver<bool>) {
    supervise!(state, shutdown, ForgeJob, Queue::Forge, 1, jobs::forge::run)
}

/// Restores are rare and long: one at a time per claim, like deploys.
pub async fn snapshot_queue(state: Arc<WorkerState>, shutdown: watch::Receiver<bool>) {
    supervise!(
        state,
        shutdown,
        RestoreJob,
        Queue::Snapshot,
        1,
        jobs::restore::run
    )
}

/// Change runs are rare and may hold the app lease: one at a time per claim.
pub async fn changes_queue(state: Arc<WorkerState>, shutdown: watch::Receiver<bool>) {
    supervise!(
        state,
        shutdown,
        ChangesJob,
        Queue::Changes,
        1,
        jobs::changes::run
    )
}

/// Function runs mostly wait on their containers: many at once per worker,
/// claimed a few at a time.
pub async fn function_queue(state: Arc<WorkerState>, shutdown: watch::Receiver<bool>) {
    let concurrency = state.config.function_worker_concurrency;
    supervise!(
        state,
        shutdown,
        FunctionJob,
        Queue::Function,
        4,
        jobs::function::run,
        concurrency
    )
}
