//! norn-scheduler: enqueue-only periodic work. Several replicas may run; one
//! leads, holding a Postgres session advisory lock on a dedicated connection.
//! If the leader dies its connection closes, the lock frees, and a standby
//! takes over on its next attempt.
//!
//! The leader prunes finished queue rows and health checks older than 24 h.
//! Cron ticks and health-check enqueueing arrive with their own issue.

use std::time::Duration;

use norn_shared::Config;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

const LEADER_LOCK: i64 = 0x6e6f_726e_5f73_6368; // "norn_sch"
const ELECTION_RETRY: Duration = Duration::from_secs(2);
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

async fn try_lead(url: &str) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = PgConnection::connect(url).await?;
    let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK)
        .fetch_one(&mut conn)
        .await?;
    Ok(got.then_some(conn))
}

/// Deletes health checks older than 24 h in batches, so inserts never wait
/// behind one long delete.
pub async fn prune_health_checks(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM health_checks WHERE id IN (
                SELECT id FROM health_checks WHERE checked_at < now() - interval '24 hours'
                LIMIT 5000 FOR UPDATE SKIP LOCKED)",
        )
        .execute(pool)
        .await?
        .rows_affected();
        total += n;
        if n < 5000 {
            return Ok(total);
        }
    }
}

async fn lead(
    pool: &PgPool,
    config: &Config,
    mut leader: PgConnection,
    shutdown: &mut watch::Receiver<bool>,
) {
    tracing::info!(node = %config.node_name, "scheduler is leading");
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        // A dead leader connection means we may no longer hold the lock.
        if sqlx::query("SELECT 1").execute(&mut leader).await.is_err() {
            tracing::warn!("lost the leader connection; standing for election again");
            return;
        }
        match norn_shared::queue::prune(pool, config.job_retention).await {
            Ok(n) if n > 0 => tracing::info!(rows = n, "pruned finished jobs"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning finished jobs failed"),
        }
        match prune_health_checks(pool).await {
            Ok(n) if n > 0 => tracing::info!(rows = n, "pruned health checks older than 24h"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning health checks failed"),
        }
    }
}

pub async fn run(
    pool: PgPool,
    config: Config,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SchedulerError> {
    let url = config
        .require_database_url()
        .map_err(|e| SchedulerError::Db(sqlx::Error::Configuration(e.into())))?
        .to_owned();
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        match try_lead(&url).await {
            Ok(Some(conn)) => lead(&pool, &config, conn, &mut shutdown).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "leader election failed"),
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
            _ = tokio::time::sleep(ELECTION_RETRY) => {}
        }
    }
}
