//! Runs one apalis worker per queue and keeps it running: when Postgres
//! restarts or a connection dies, apalis' `run()` returns an error; we log it
//! and start a fresh worker under a fresh name (a reused name would hide a dead
//! worker's jobs from orphan recovery, see ARCHITECTURE.md).

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use norn_shared::jobs::DeployJob;
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

/// Runs the deploy queue's worker until `shutdown` turns true.
pub async fn deploy_queue(state: Arc<WorkerState>, shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let backend = PostgresStorage::<DeployJob>::new(&state.pool)
            .with_config(queue::worker_config(Queue::Deploy, 1))
            .with_pubsub();
        let name = worker_name(&state, Queue::Deploy);
        let worker = WorkerBuilder::new(name.as_str())
            .backend(backend)
            .data(state.clone())
            .concurrency(state.config.worker_concurrency)
            // Handlers run on their own tasks, so a worker restarted after a
            // database outage does not cancel deploys that are mid-step.
            .parallelize(spawn_handler)
            .build(jobs::deploy::run);
        tracing::info!(worker = %name, "deploy worker started");
        match worker.run_until(stopped(shutdown.clone())).await {
            Ok(()) if *shutdown.borrow() => return,
            Ok(()) => tracing::warn!(worker = %name, "deploy worker stopped; restarting"),
            Err(e) => {
                tracing::warn!(worker = %name, error = %e, "deploy worker failed; restarting")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
