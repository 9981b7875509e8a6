//! Database access. Every query lives here; callers never write SQL.

pub mod apps;
pub mod change_runs;
pub mod changes;
pub mod credentials;
pub mod cron;
pub mod deployments;
pub mod forge;
pub mod functions;
pub mod health;
pub mod lease;
pub mod locks;
pub mod logs;
pub mod nodes;
pub mod previews;
pub mod restores;
pub mod routes;
pub mod saga;
pub mod secrets;
pub mod tokens;
pub mod webhooks;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error("migrating Norn's schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("setting up the queue schema: {0}")]
    Queue(#[from] apalis_postgres::Error),
    #[error(transparent)]
    Transition(#[from] crate::domain::IllegalTransition),
    #[error("deployment {0} not found")]
    DeploymentNotFound(String),
    #[error("deployment {id} is {actual}, expected {expected}")]
    Conflict {
        id: String,
        expected: String,
        actual: String,
    },
}

/// Opens a pool that waits for Postgres to come back instead of failing fast:
/// every role must ride out a database restart.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name("norn");
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

/// Applies Norn's migrations and the queue's. Safe when several replicas start
/// at once: both migrators hold a Postgres advisory lock while they run.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    sqlx::migrate!("../migrations").run(pool).await?;
    apalis_postgres::PostgresStorage::<()>::setup(pool).await?;
    // Norn's database is no app's: only its owner (and roles granted it by
    // hand) may connect. Done at every start, since a database's grants are
    // not copied from a template; a role that does not own it changes
    // nothing. Serialised: replicas starting together would otherwise update
    // the same catalog row at once ("tuple concurrently updated").
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(
        "SELECT pg_advisory_xact_lock(7316731);
         DO $$ BEGIN
           IF EXISTS (SELECT 1 FROM pg_database d,
                             aclexplode(COALESCE(d.datacl, acldefault('d', d.datdba))) a
                      WHERE d.datname = current_database() AND a.grantee = 0
                        AND a.privilege_type IN ('CONNECT', 'TEMPORARY')) THEN
             EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
           END IF;
         EXCEPTION WHEN insufficient_privilege THEN NULL;
         END $$",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Replaces the database name in a URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}
