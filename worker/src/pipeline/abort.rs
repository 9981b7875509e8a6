//! Why a running deploy must stop before its current step ends: somebody
//! canceled it, or this worker lost the app lease (paused, partitioned) and
//! another one may already be running it.

use std::time::Duration;

use norn_shared::db::{deployments, lease};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq)]
pub enum Abort {
    Canceled { by: String },
    LeaseLost,
}

/// Background tasks that raise an [`Abort`]; stopped when dropped.
pub struct Watchers {
    rx: watch::Receiver<Option<Abort>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct Lease {
    pub app: String,
    pub holder: String,
    pub ttl: Duration,
}

impl Watchers {
    /// Keeps `lease` renewed; with a deployment id, also watches for its cancel.
    pub fn spawn(pool: &PgPool, lease: Lease, deployment_id: Option<&str>) -> Self {
        let (tx, rx) = watch::channel(None);
        let mut tasks = vec![tokio::spawn(keep_lease(pool.clone(), lease, tx.clone()))];
        if let Some(id) = deployment_id {
            tasks.push(tokio::spawn(watch_cancel(pool.clone(), id.to_owned(), tx)));
        }
        Watchers { rx, tasks }
    }

    pub fn receiver(&self) -> watch::Receiver<Option<Abort>> {
        self.rx.clone()
    }
}

pub fn current(rx: &watch::Receiver<Option<Abort>>) -> Option<Abort> {
    rx.borrow().clone()
}

/// Resolves once an abort is raised; never, if the watchers are gone.
pub async fn raised(rx: &mut watch::Receiver<Option<Abort>>) -> Abort {
    let seen = rx.wait_for(Option::is_some).await.map(|a| a.clone());
    match seen {
        Ok(a) => a.unwrap_or(Abort::LeaseLost),
        Err(_) => std::future::pending().await,
    }
}

async fn keep_lease(pool: PgPool, lease: Lease, tx: watch::Sender<Option<Abort>>) {
    // Six renewals per TTL: a few failed ones in a row are survivable.
    let mut tick = tokio::time::interval(lease.ttl / 6);
    loop {
        tick.tick().await;
        match lease::extend(&pool, &lease.app, &lease.holder, lease.ttl).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(app = %lease.app, "lost the app lease; stopping this deploy");
                let _ = tx.send(Some(Abort::LeaseLost));
                return;
            }
            Err(e) => {
                tracing::warn!(app = %lease.app, error = %e, "could not extend the app lease")
            }
        }
    }
}

/// Woken by the API's NOTIFY; the 2 s re-check covers a dropped connection.
async fn watch_cancel(pool: PgPool, id: String, tx: watch::Sender<Option<Abort>>) {
    let mut listener = None;
    loop {
        if listener.is_none() {
            listener = match PgListener::connect_with(&pool).await {
                Ok(mut l) => match l.listen(deployments::CANCEL_CHANNEL).await {
                    Ok(()) => Some(l),
                    Err(_) => None,
                },
                Err(_) => None,
            };
        }
        match deployments::cancel_requested(&pool, &id).await {
            Ok(Some(by)) => {
                let _ = tx.send(Some(Abort::Canceled { by }));
                return;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not check for a cancel request"),
        }
        match listener.as_mut() {
            Some(l) => {
                if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(2), l.recv()).await {
                    listener = None;
                }
            }
            None => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}
