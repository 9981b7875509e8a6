//! norn-scheduler: enqueue-only periodic work. Several replicas may run; one
//! leads, holding a Postgres session advisory lock on a dedicated connection.
//! If the leader dies its connection closes, the lock frees, and a standby
//! takes over on its next attempt (every second). Exactly-once does not rest
//! on the lock: ticks and health slots are keyed in the database.
//!
//! The leader enqueues cron ticks and health checks, reports missed ticks and
//! lost executions, and prunes finished queue rows and health checks older
//! than 24 h.

pub mod cron;
pub mod health;
mod incidents;
mod leader;
pub mod recovery;
pub mod sweep;

use std::time::Duration;

use norn_shared::Config;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

const LEADER_LOCK: i64 = 0x6e6f_726e_5f73_6368; // "norn_sch"
const ELECTION_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] norn_shared::queue::QueueError),
    #[error(transparent)]
    Apps(#[from] norn_shared::db::apps::AppError),
    #[error(transparent)]
    Functions(#[from] norn_shared::db::functions::FunctionError),
    #[error(transparent)]
    Preview(#[from] norn_shared::preview::PreviewError),
}

/// The leader connection's `application_name`, so operators (and tests) can
/// see which replica leads: `SELECT application_name FROM pg_stat_activity`.
pub fn leader_application_name(node: &str) -> String {
    format!("norn-scheduler-leader:{node}")
}

async fn try_lead(url: &str, node: &str) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = PgConnection::connect(url).await?;
    let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK)
        .fetch_one(&mut conn)
        .await?;
    if !got {
        return Ok(None);
    }
    sqlx::query("SELECT set_config('application_name', $1, false)")
        .bind(leader_application_name(node))
        .execute(&mut conn)
        .await?;
    Ok(Some(conn))
}

pub async fn run(
    pool: PgPool,
    config: Config,
    shutdown: watch::Receiver<bool>,
) -> Result<(), SchedulerError> {
    let membership =
        norn_shared::registry::join(pool.clone(), &config, "scheduler", shutdown.clone());
    let result = elect_and_lead(pool, config, shutdown).await;
    membership.leave().await;
    result
}

async fn elect_and_lead(
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
        match try_lead(&url, &config.node_name).await {
            Ok(Some(conn)) => leader::lead(&pool, &config, conn, &mut shutdown).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "leader election failed"),
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
            _ = tokio::time::sleep(ELECTION_RETRY) => {}
        }
    }
}
