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

/// Connects to `DATABASE_URL` and applies all migrations.
pub async fn database(config: &Config, max_connections: u32) -> Result<PgPool, BootError> {
    let pool = crate::db::connect(config.require_database_url()?, max_connections)
        .await
        .map_err(BootError::Connect)?;
    crate::db::migrate(&pool).await?;
    Ok(pool)
}
