//! The function runs of this worker: who is running (so a cancel finds its
//! run), the one LISTEN connection cancels arrive on, and the janitor that
//! removes function containers whose execution ended, and warm containers
//! whose worker is gone (a worker killed mid-run leaves its containers
//! behind; the next janitor pass on that engine removes them once the sweep
//! has ended the execution, or the worker's heartbeat is lost).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use norn_shared::db::functions;
use tokio::sync::{Notify, watch};

use crate::state::WorkerState;

/// How often the janitor looks for ended functions' containers.
const JANITOR_EVERY: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Invocations {
    running: Mutex<HashMap<i64, Arc<Notify>>>,
}

/// A run's place in the registry; leaves it when dropped.
pub struct Registered<'a> {
    owner: &'a Invocations,
    id: i64,
    pub cancelled: Arc<Notify>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.owner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Invocations {
    pub fn register(&self, id: i64) -> Registered<'_> {
        let cancelled = Arc::new(Notify::new());
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, cancelled.clone());
        Registered {
            owner: self,
            id,
            cancelled,
        }
    }

    /// Stops run `id` if this worker runs it. `notify_one` keeps a permit,
    /// so a cancel that arrives before the run waits on it is not lost.
    pub fn cancel(&self, id: i64) {
        if let Some(n) = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            n.notify_one();
        }
    }

    fn ids(&self) -> Vec<i64> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }
}

/// Delivers cancels to this worker's runs until `stop`. After every
/// (re)connection it asks the database which of its runs were cancelled
/// meanwhile, since a NOTIFY sent while disconnected is gone.
pub async fn listen_for_cancels(state: Arc<WorkerState>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(250);
    while !*stop.borrow() {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&state.pool).await?;
            listener.listen(functions::CANCEL_CHANNEL).await?;
            loop {
                catch_up(&state).await?;
                // `None`: the connection dropped and was re-made.
                while let Some(note) = listener.try_recv().await? {
                    if let Ok(id) = note.payload().parse::<i64>() {
                        state.invocations.cancel(id);
                    }
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            ended = listening => {
                if let Err(e) = ended {
                    tracing::warn!(error = %e, "function cancel listener failed; reconnecting");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn catch_up(state: &WorkerState) -> Result<(), sqlx::Error> {
    let ids = state.invocations.ids();
    if ids.is_empty() {
        return Ok(());
    }
    let mut conn = state.pool.acquire().await?;
    for id in functions::cancel_requested_among(&mut conn, &ids).await? {
        state.invocations.cancel(id);
    }
    Ok(())
}

/// Removes function containers whose execution ended, every
/// [`JANITOR_EVERY`], until `stop`.
pub async fn janitor(state: Arc<WorkerState>, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = sweep_containers(&state).await {
            tracing::warn!(error = %e, "function container janitor failed");
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(JANITOR_EVERY) => {}
        }
    }
}

async fn sweep_containers(state: &WorkerState) -> Result<(), crate::WorkerError> {
    let found = state.runtime.function_containers().await?;
    if found.is_empty() {
        return Ok(());
    }
    let pairs: Vec<(i64, String)> = found
        .iter()
        .filter_map(|c| Some((c.execution?, c.node.clone())))
        .collect();
    // Warm containers (no execution yet, or taken by a run whose worker
    // died) belong to their worker while it lives.
    let mut nodes: Vec<String> = found
        .iter()
        .filter(|c| c.execution.is_none() && c.node != state.node_id)
        .map(|c| c.node.clone())
        .collect();
    nodes.sort();
    nodes.dedup();
    let mut conn = state.pool.acquire().await?;
    let ended = functions::ended_among(&mut conn, &pairs).await?;
    let gone = norn_shared::db::nodes::gone_among(&mut conn, &nodes).await?;
    drop(conn);
    for c in found {
        let remove = match c.execution {
            Some(id) => ended.contains(&id),
            None => gone.contains(&c.node),
        };
        if remove {
            state.runtime.remove(&c.name).await?;
            tracing::info!(container = %c.name, execution = ?c.execution,
                "removed a function container nobody will use");
        }
    }
    Ok(())
}
