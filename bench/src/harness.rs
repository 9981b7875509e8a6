//! What every scenario shares: a fresh database, the no-op job, and one
//! apalis worker built either with apalis' defaults or with Norn's settings.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use norn_shared::queue::{self, Queue};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::Notify;

/// Both configurations run on the same queue name, each in its own database.
pub const QUEUE: Queue = Queue::Health;

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// `PostgresStorage::new(..).with_config(Config::default().queue(..))`, as apalis' README shows.
    ApalisDefault,
    /// What Norn's workers run: `queue::worker_config` + `.with_pubsub()` +
    /// handlers on their own tasks.
    Norn { batch: usize },
}

impl Mode {
    pub fn label(self) -> String {
        match self {
            Mode::ApalisDefault => "apalis default".into(),
            Mode::Norn { batch } => format!("Norn (batch {batch})"),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Probe {
    /// Wall-clock microseconds taken just before the push.
    pub sent_us: i64,
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// Counts handled jobs and records how long each waited.
pub struct Counter {
    handled: AtomicU64,
    target: u64,
    reached: Notify,
    waits: std::sync::Mutex<Vec<Duration>>,
    /// Handlers never finish: the job stays claimed (orphan scenario).
    hold: bool,
}

impl Counter {
    pub fn new(target: u64, hold: bool) -> Arc<Self> {
        Arc::new(Counter {
            handled: AtomicU64::new(0),
            target,
            reached: Notify::new(),
            waits: std::sync::Mutex::new(Vec::new()),
            hold,
        })
    }

    pub async fn wait(&self) {
        while self.handled.load(Ordering::SeqCst) < self.target {
            let notified = self.reached.notified();
            if self.handled.load(Ordering::SeqCst) >= self.target {
                break;
            }
            notified.await;
        }
    }

    pub fn waits(&self) -> Vec<Duration> {
        self.waits.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

pub async fn handle(job: Probe, counter: Data<Arc<Counter>>) -> Result<(), BoxDynError> {
    let waited = Duration::from_micros((now_us() - job.sent_us).max(0) as u64);
    if let Ok(mut w) = counter.waits.lock() {
        w.push(waited);
    }
    let n = counter.handled.fetch_add(1, Ordering::SeqCst) + 1;
    if n >= counter.target {
        counter.reached.notify_waiters();
    }
    if counter.hold {
        futures::future::pending::<()>().await;
    }
    Ok(())
}

fn spawn_handler<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(f)
}

/// Runs a worker in `mode` until `until` completes; the worker is dropped then.
pub async fn with_worker<T>(
    mode: Mode,
    pool: &PgPool,
    concurrency: usize,
    counter: Arc<Counter>,
    until: impl Future<Output = T>,
) -> anyhow::Result<T> {
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    match mode {
        Mode::ApalisDefault => {
            let backend = PostgresStorage::<Probe>::new(pool)
                .with_config(apalis_postgres::Config::default().queue(QUEUE.name()));
            let worker = WorkerBuilder::new(name.as_str())
                .backend(backend)
                .data(counter)
                .concurrency(concurrency)
                .build(handle);
            race(worker.run(), until).await
        }
        Mode::Norn { batch } => {
            let backend = PostgresStorage::<Probe>::new(pool)
                .with_config(queue::worker_config(QUEUE, batch))
                .with_pubsub();
            let worker = WorkerBuilder::new(name.as_str())
                .backend(backend)
                .data(counter)
                .concurrency(concurrency)
                .parallelize(spawn_handler)
                .build(handle);
            race(worker.run(), until).await
        }
    }
}

async fn race<E: std::fmt::Debug, T>(
    worker: impl Future<Output = Result<(), E>>,
    until: impl Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::select! {
        r = worker => Err(anyhow!("worker stopped early: {r:?}")),
        v = until => Ok(v),
    }
}

/// Pushes `n` no-op jobs in batches of 1,000 (apalis' `push_tasks`, one statement each).
pub async fn prefill(pool: &PgPool, n: u64) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let chunk = left.min(1000);
        let tasks = (0..chunk)
            .map(|_| {
                let body = serde_json::to_vec(&Probe { sent_us: now_us() })?;
                Ok(TaskBuilder::new(body).build())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut conn = pool.acquire().await?;
        apalis_postgres::queries::push_tasks(&mut *conn, QUEUE.name(), tasks).await?;
        left -= chunk;
    }
    Ok(())
}

pub async fn push_one(pool: &PgPool) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&Probe { sent_us: now_us() })?;
    let mut conn = pool.acquire().await?;
    apalis_postgres::queries::push_tasks(
        &mut *conn,
        QUEUE.name(),
        vec![TaskBuilder::new(body).build()],
    )
    .await?;
    Ok(())
}

/// A fresh database with Norn's schema (and so apalis'); dropped by [`Db::drop`].
pub struct Db {
    pub pool: PgPool,
    admin: String,
    name: String,
}

impl Db {
    pub async fn fresh(admin: &str) -> anyhow::Result<Db> {
        let name = format!("norn_bench_{}", uuid::Uuid::new_v4().simple());
        let admin_pool = PgPool::connect(admin)
            .await
            .with_context(|| "connecting to the bench server (NORN_BENCH_DATABASE_URL)")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin_pool)
            .await?;
        admin_pool.close().await;
        let url = norn_shared::db::with_database(admin, &name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await?;
        norn_shared::db::migrate(&pool).await?;
        Ok(Db {
            pool,
            admin: admin.to_string(),
            name,
        })
    }

    pub fn url(&self) -> String {
        norn_shared::db::with_database(&self.admin, &self.name)
    }

    /// ANALYZE + CHECKPOINT, so every measured run starts from the same state.
    pub async fn settle(&self) -> anyhow::Result<()> {
        sqlx::query("ANALYZE").execute(&self.pool).await?;
        sqlx::query("CHECKPOINT").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn unfinished(&self) -> anyhow::Result<i64> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM apalis.jobs WHERE status <> 'Done'")
                .fetch_one(&self.pool)
                .await?;
        Ok(n)
    }

    pub async fn drop(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let admin_pool = PgPool::connect(&self.admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&admin_pool)
        .await?;
        admin_pool.close().await;
        Ok(())
    }
}

/// One line on the server and machine, printed above every result table.
pub async fn describe_server(url: &str) -> anyhow::Result<String> {
    let pool = PgPool::connect(url)
        .await
        .with_context(|| "connecting to the bench server (NORN_BENCH_DATABASE_URL)")?;
    let mut show = Vec::new();
    for setting in ["server_version", "fsync", "synchronous_commit"] {
        let (v,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(&pool)
            .await?;
        show.push(v);
    }
    pool.close().await;
    Ok(format!(
        "Postgres {}, fsync={}, synchronous_commit={}; {} CPUs; pool 10 connections; tokio 2 worker threads.",
        show[0],
        show[1],
        show[2],
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    ))
}
