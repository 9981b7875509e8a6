//! The leader's loop: cron ticks on time, the rest on intervals.

use std::time::Duration;

use chrono::Utc;
use norn_shared::Config;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio::time::Instant;

const SWEEP_EVERY: Duration = Duration::from_secs(5);
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Upper bound on one sleep: new cron apps and a lost lock are noticed this fast.
const MAX_SLEEP: Duration = Duration::from_secs(1);

pub(crate) async fn lead(
    pool: &PgPool,
    config: &Config,
    mut leader: PgConnection,
    shutdown: &mut watch::Receiver<bool>,
) {
    tracing::info!(node = %config.node_name, "scheduler is leading");
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(mut l) => match l.listen(norn_shared::db::cron::CHANGED_CHANNEL).await {
            Ok(()) => Some(l),
            Err(_) => None,
        },
        Err(_) => None,
    };
    let mut next_health = Instant::now();
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    let mut next_prune = Instant::now() + Duration::from_secs(5);
    let mut pruning: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        // A dead leader connection means the lock may be gone: stand again.
        if sqlx::query("SELECT 1").execute(&mut leader).await.is_err() {
            tracing::warn!("lost the leader connection; standing for election again");
            return;
        }
        let wake = match crate::cron::plan_all(pool, Utc::now()).await {
            Ok(next) => next
                .and_then(|n| (n - Utc::now()).to_std().ok())
                .map(|d| d + Duration::from_millis(1))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP),
            Err(e) => {
                tracing::warn!(error = %e, "planning cron ticks failed");
                MAX_SLEEP
            }
        };
        let now = Instant::now();
        if now >= next_health {
            next_health = now + config.health_check_interval;
            if let Err(e) = crate::health::enqueue_checks(pool, config.health_check_interval).await
            {
                tracing::warn!(error = %e, "enqueueing health checks failed");
            }
        }
        if now >= next_sweep {
            next_sweep = now + SWEEP_EVERY;
            if let Err(e) = crate::sweep::sweep(pool).await {
                tracing::warn!(error = %e, "sweeping cron executions failed");
            }
        }
        // Pruning can take a while on a big table; it must not delay ticks.
        if now >= next_prune && pruning.as_ref().is_none_or(|h| h.is_finished()) {
            next_prune = now + PRUNE_EVERY;
            pruning = Some(tokio::spawn(prune(pool.clone(), Retention::of(config))));
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {
                if let Some(h) = pruning { h.abort(); }
                return;
            }
            _ = tokio::time::sleep(wake) => {}
            _ = changed(&mut listener) => {}
        }
    }
}

/// Resolves on a cron-state change; never when LISTEN is unavailable (the
/// loop then relies on its 1 s wake-up).
async fn changed(listener: &mut Option<PgListener>) {
    match listener {
        Some(l) => {
            if l.recv().await.is_err() {
                tokio::time::sleep(MAX_SLEEP).await;
            }
        }
        None => std::future::pending().await,
    }
}

/// How long each kind of history is kept.
struct Retention {
    jobs: Duration,
    logs: Duration,
    functions: Duration,
}

impl Retention {
    fn of(config: &norn_shared::Config) -> Self {
        Self {
            jobs: config.job_retention,
            logs: config.log_retention,
            functions: config.function_retention,
        }
    }
}

async fn prune(pool: PgPool, retention: Retention) {
    match norn_shared::queue::prune(&pool, retention.jobs).await {
        Ok(n) if n > 0 => tracing::info!(rows = n, "pruned finished jobs"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning finished jobs failed"),
    }
    match norn_shared::db::health::prune(&pool, norn_shared::db::health::PRUNE_BATCH).await {
        Ok(n) if n > 0 => tracing::info!(rows = n, "pruned health checks older than 24h"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning health checks failed"),
    }
    match norn_shared::db::logs::prune(&pool, retention.logs).await {
        Ok(n) if n > 0 => {
            tracing::info!(rows = n, "pruned step log chunks past NORN_LOG_RETENTION")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning step logs failed"),
    }
    match norn_shared::db::functions::prune(&pool, retention.functions, 1000).await {
        Ok(n) if n > 0 => {
            tracing::info!(
                rows = n,
                "pruned function runs past NORN_FUNCTION_RETENTION"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning function runs failed"),
    }
    match norn_shared::db::webhooks::prune(&pool).await {
        Ok(n) if n > 0 => tracing::info!(rows = n, "pruned webhook deliveries past retention"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning webhook deliveries failed"),
    }
    match norn_shared::db::change_runs::prune(&pool).await {
        Ok(n) if n > 0 => tracing::info!(rows = n, "pruned change runs past retention"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning change runs failed"),
    }
}
