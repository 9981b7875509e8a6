//! What an app's containers are given of its services: its own credentials
//! and nothing of Norn's. Every container of an app (instances, test,
//! migrate, cron) gets its environment from [`app_env`].

use std::collections::BTreeMap;

use norn_shared::db::credentials;
use norn_shared::infraspec::InfraSpec;

use crate::adapters::postgres::Login;
use crate::state::WorkerState;

/// The service an app's database credentials are stored under.
pub const POSTGRES: &str = "postgres";

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("reading the app's credentials: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Crypto(#[from] norn_shared::crypto::CryptoError),
    #[error("the app's database {0} is not forged yet (no credentials); deploy or forge the app")]
    NotForged(String),
    #[error("{0}")]
    Url(String),
}

/// The app's own database login, when Norn has made one.
pub async fn pg_login(state: &WorkerState, app: &str) -> Result<Option<Login>, ServicesError> {
    let mut conn = state.pool.acquire().await?;
    let Some(cred) = credentials::get(&mut conn, app, POSTGRES).await? else {
        return Ok(None);
    };
    let key = state
        .config
        .secret_key
        .as_ref()
        .ok_or(norn_shared::crypto::CryptoError::NoKey)?;
    Ok(Some(Login {
        role: cred.username,
        password: key.open(&cred.sealed)?,
    }))
}

/// Like [`pg_login`], for a step that cannot go on without it.
pub async fn require_pg_login(
    state: &WorkerState,
    app: &str,
    database: &str,
) -> Result<Login, ServicesError> {
    pg_login(state, app)
        .await?
        .ok_or_else(|| ServicesError::NotForged(database.to_owned()))
}

/// The spec's env plus `DATABASE_URL` of the app's own role when it
/// declares a database.
pub async fn app_env(
    state: &WorkerState,
    app: &str,
    spec: &InfraSpec,
) -> Result<BTreeMap<String, String>, ServicesError> {
    let mut env = spec.env.clone();
    if let Some(pg) = &spec.services.postgres {
        let login = require_pg_login(state, app, &pg.database).await?;
        let url = state
            .pg
            .container_url(&pg.database, &login)
            .map_err(|e| ServicesError::Url(e.to_string()))?;
        env.insert("DATABASE_URL".into(), url);
    }
    Ok(env)
}
