//! Start-up shared by every binary: logging, and the database connected and
//! migrated.

use sqlx::PgPool;

use crate::Config;
use crate::config::ConfigError;
use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("connecting to Postgres: {0}")]
    Connect(sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] DbError),
}

/// `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// How long a starting process waits for Postgres to come (back) up.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Connects to `DATABASE_URL` and applies all migrations. A process that
/// starts while Postgres restarts (its connection terminated by the
/// administrator, refused while starting up) tries again for up to a
/// minute instead of exiting: every role rides out a database restart, at
/// start too. Other errors (a wrong password, a bad URL) fail at once.
pub async fn database(config: &Config, max_connections: u32) -> Result<PgPool, BootError> {
    let url = config.require_database_url()?;
    let give_up = tokio::time::Instant::now() + PATIENCE;
    let mut backoff = std::time::Duration::from_millis(250);
    loop {
        let attempt = async {
            let pool = crate::db::connect(url, max_connections)
                .await
                .map_err(BootError::Connect)?;
            crate::db::migrate(&pool).await?;
            Ok::<_, BootError>(pool)
        };
        match attempt.await {
            Ok(pool) => return Ok(pool),
            Err(e) if e.transient() && tokio::time::Instant::now() < give_up => {
                tracing::warn!(error = %e, "Postgres is not available yet; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

impl BootError {
    /// The server went away or is not up yet (worth waiting for), rather
    /// than something wrong with what was asked.
    fn transient(&self) -> bool {
        // The wrapped errors are looked at directly: transparent wrappers
        // leave them out of the `source` chain.
        match self {
            BootError::Connect(e) | BootError::Migrate(DbError::Sqlx(e)) => transient(e),
            BootError::Migrate(DbError::Migrate(e)) => transient(e),
            BootError::Migrate(DbError::Queue(e)) => transient(e),
            BootError::Config(_) | BootError::Migrate(_) => false,
        }
    }
}

/// Whether an error (or one it wraps) says the server went away or is not
/// up yet.
fn transient(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        if let Some(sqlx) = e.downcast_ref::<sqlx::Error>() {
            match sqlx {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                    return true;
                }
                sqlx::Error::Database(db) => {
                    // 57P01-03: shut down by an administrator, crashed,
                    // starting up; class 08: the connection failed.
                    let code = db.code().unwrap_or_default();
                    return code.starts_with("57P") || code.starts_with("08");
                }
                _ => {}
            }
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    #[test]
    fn a_server_that_is_away_is_waited_for_and_a_bad_request_is_not() {
        assert!(BootError::Connect(io()).transient());
        assert!(BootError::Migrate(DbError::Sqlx(io())).transient());
        assert!(BootError::Connect(sqlx::Error::PoolTimedOut).transient());
        assert!(!BootError::Connect(sqlx::Error::Configuration("bad url".into())).transient());
        assert!(!BootError::Migrate(DbError::DeploymentNotFound("x".into())).transient());
    }
}
