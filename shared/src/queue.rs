//! Norn's queues: apalis-postgres 1.0 underneath, with the gaps its defaults
//! leave closed here (see ARCHITECTURE.md, "Queues"):
//! - a domain row and its job commit in one transaction ([`enqueue`] takes the caller's connection);
//! - a duplicate idempotency key is a no-op ([`Enqueued::Duplicate`]), not an error;
//! - finished rows are pruned ([`prune`]);
//! - workers LISTEN, heartbeat fast and register under a per-process name
//!   ([`worker_config`], and the worker crate's supervisor).

use std::time::Duration;

use apalis::prelude::TaskBuilder;
use serde::Serialize;
use sqlx::{Acquire, PgConnection, PgPool};

/// One queue per job kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    Deploy,
    Forge,
    Function,
    Cron,
    Health,
    Snapshot,
    Changes,
}

impl Queue {
    pub const ALL: [Queue; 7] = [
        Queue::Deploy,
        Queue::Forge,
        Queue::Function,
        Queue::Cron,
        Queue::Health,
        Queue::Snapshot,
        Queue::Changes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Queue::Deploy => "norn.deploy",
            Queue::Forge => "norn.forge",
            Queue::Function => "norn.function",
            Queue::Cron => "norn.cron",
            Queue::Health => "norn.health",
            Queue::Snapshot => "norn.snapshot",
            Queue::Changes => "norn.changes",
        }
    }
}

/// How fast a dead worker's jobs come back: `heartbeat × missed` (10 s here,
/// against apalis' default 300 s).
pub const HEARTBEAT: Duration = Duration::from_secs(2);
pub const MISSED_HEARTBEATS: usize = 5;

/// The apalis-postgres settings every Norn worker uses for `queue`.
/// `batch_size` is how many jobs one worker claims ahead; long jobs (deploys)
/// use 1 so that an idle worker elsewhere can take the next one.
pub fn worker_config(queue: Queue, batch_size: usize) -> apalis_postgres::Config {
    apalis_postgres::Config::default()
        .queue(queue.name())
        .batch_size(batch_size.max(1))
        .heartbeat_interval(HEARTBEAT)
        .missed_heartbeats(MISSED_HEARTBEATS)
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("encoding job: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Apalis(#[from] apalis_postgres::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Pushed,
    /// A job with the same idempotency key already exists; nothing was added.
    Duplicate,
}

/// Pushes a job on `conn`, which is normally the transaction that also writes
/// the domain row. The push runs in a savepoint so a duplicate key leaves the
/// caller's transaction usable.
pub async fn enqueue<J: Serialize>(
    conn: &mut PgConnection,
    queue: Queue,
    job: &J,
    idempotency_key: Option<&str>,
) -> Result<Enqueued, QueueError> {
    let mut builder = TaskBuilder::new(serde_json::to_vec(job)?).max_attempts(5);
    if let Some(key) = idempotency_key {
        builder = builder.idempotency_key(key);
    }
    let mut savepoint = conn.begin().await?;
    match apalis_postgres::queries::push_tasks(&mut *savepoint, queue.name(), vec![builder.build()])
        .await
    {
        Ok(()) => {
            savepoint.commit().await?;
            Ok(Enqueued::Pushed)
        }
        Err(apalis_postgres::Error::Database(sqlx::Error::Database(e)))
            if e.is_unique_violation() =>
        {
            savepoint.rollback().await?;
            Ok(Enqueued::Duplicate)
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes finished job rows older than `retention`, in small batches so a
/// prune never holds many row locks or stalls the queue. Returns rows deleted.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    const BATCH: i64 = 1000;
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM apalis.jobs WHERE id IN (
                SELECT id FROM apalis.jobs
                WHERE (status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts))
                  AND done_at < now() - make_interval(secs => $1)
                LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(retention.as_secs_f64())
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < BATCH as u64 {
            break;
        }
    }
    // Worker rows of processes long gone, once nothing points at them.
    sqlx::query(
        "DELETE FROM apalis.workers w WHERE last_seen < now() - interval '1 day'
         AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = w.id)",
    )
    .execute(pool)
    .await?;
    Ok(total)
}

/// Jobs not yet finished, per queue.
pub async fn depth(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT job_type, count(*) FROM apalis.jobs
         WHERE status IN ('Pending', 'Queued', 'Running')
            OR (status = 'Failed' AND attempts < max_attempts)
         GROUP BY job_type ORDER BY job_type",
    )
    .fetch_all(pool)
    .await
}
