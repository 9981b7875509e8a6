//! Keeps this process in the fleet registry (`cluster_nodes`): registers at
//! start, writes a heartbeat every few seconds with its running job count,
//! notices when it is asked to drain, and marks itself removed when it stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Config;
use crate::db::nodes::{self, HEARTBEAT, NewNode};

pub struct Membership {
    pub id: String,
    /// Jobs this process is running; handlers hold a [`Busy`] guard.
    pub running: Arc<AtomicUsize>,
    /// Turns true once the node is asked to drain.
    pub draining: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

/// Counts one running job while it lives.
pub struct Busy(Arc<AtomicUsize>);

impl Busy {
    pub fn new(running: &Arc<AtomicUsize>) -> Self {
        running.fetch_add(1, Ordering::SeqCst);
        Busy(running.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts the membership task for `role` (`api`, `worker`, `scheduler`);
/// it runs until `shutdown` turns true.
pub fn join(
    pool: PgPool,
    config: &Config,
    role: &'static str,
    shutdown: watch::Receiver<bool>,
) -> Membership {
    join_counting(
        pool,
        config,
        role,
        shutdown,
        Arc::default(),
        None,
        new_node_id(),
    )
}

/// A fresh node id (time-ordered, never reused by a restarted process).
pub fn new_node_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Checks the container engine for the heartbeat (workers only).
pub type EngineProbe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// [`join`] reporting `running` as this process's running jobs (a role that
/// must finish setting up before it registers as ready creates it first).
pub fn join_counting(
    pool: PgPool,
    config: &Config,
    role: &'static str,
    shutdown: watch::Receiver<bool>,
    running: Arc<AtomicUsize>,
    engine: Option<EngineProbe>,
    id: String,
) -> Membership {
    let (drain_tx, draining) = watch::channel(false);
    let task = tokio::spawn(beat(Beat {
        pool,
        id: id.clone(),
        name: config.node_name.clone(),
        role,
        running: running.clone(),
        engine,
        drain_tx,
        shutdown,
    }));
    Membership {
        id,
        running,
        draining,
        task,
    }
}

impl Membership {
    /// Waits until the task has marked this node removed (after shutdown).
    pub async fn leave(self) {
        let _ = self.task.await;
    }
}

struct Beat {
    pool: PgPool,
    id: String,
    name: String,
    role: &'static str,
    running: Arc<AtomicUsize>,
    engine: Option<EngineProbe>,
    drain_tx: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
}

fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

async fn beat(mut b: Beat) {
    let host = host();
    let node = NewNode {
        id: &b.id,
        name: &b.name,
        role: b.role,
        host: &host,
        pid: std::process::id() as i32,
    };
    let mut registered = false;
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = b.shutdown.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        let engine = match &b.engine {
            Some(probe) => Some(probe().await),
            None => None,
        };
        if !registered {
            // With the engine's state: a worker that registered without it
            // would make `/api/health` call the engine down until its next beat.
            match nodes::register(&b.pool, &node, engine).await {
                Ok(()) => registered = true,
                Err(e) => {
                    tracing::warn!(error = %e, "could not register in cluster_nodes; retrying")
                }
            }
            continue;
        }
        let running = b.running.load(Ordering::SeqCst) as i32;
        match nodes::heartbeat(&b.pool, &b.id, running, engine).await {
            Ok(Some(status)) if status == "draining" => {
                if !*b.drain_tx.borrow() {
                    tracing::warn!(node = %b.name, "asked to drain: no new jobs will be claimed");
                }
                let _ = b.drain_tx.send(true);
            }
            Ok(Some(_)) => {}
            Ok(None) => registered = false,
            Err(e) => tracing::warn!(error = %e, "could not write the cluster heartbeat"),
        }
    }
    if let Err(e) = nodes::mark_removed(&b.pool, &b.id).await {
        tracing::warn!(error = %e, "could not mark this node removed");
    }
}
