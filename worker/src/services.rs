//! What an app's containers are given of its services: its own credentials
//! and nothing of Norn's. Every container of an app (instances, test,
//! migrate, cron) gets its environment from [`app_env`].

use std::collections::BTreeMap;

use norn_shared::db::{credentials, secrets};
use norn_shared::infraspec::InfraSpec;
use norn_shared::text::Masker;

use crate::adapters::postgres::Login;
use crate::state::WorkerState;

/// The service an app's database credentials are stored under.
pub const POSTGRES: &str = "postgres";
/// The service an app's key-value credentials are stored under.
pub const KV: &str = "kv";

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("reading the app's credentials: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Crypto(#[from] norn_shared::crypto::CryptoError),
    #[error("the app's database {0} is not forged yet (no credentials); deploy or forge the app")]
    NotForged(String),
    #[error(
        "the app's key-value namespace {0} is not forged yet (no credentials); deploy or forge the app"
    )]
    KvNotForged(String),
    #[error(
        "services.kv declared, but no key-value server is configured (NORN_KV_URL): no REDIS_URL to give"
    )]
    NoKvServer,
    #[error("{0}")]
    Url(String),
    #[error(
        "secrets listed in the infraspec but not set: {0} (set them: norn secrets <app> set NAME=value)"
    )]
    MissingSecrets(String),
}

/// The app's own database login, when Norn has made one.
pub async fn pg_login(state: &WorkerState, app: &str) -> Result<Option<Login>, ServicesError> {
    let mut conn = state.pool.acquire().await?;
    let Some(cred) = credentials::get(&mut conn, app, POSTGRES).await? else {
        return Ok(None);
    };
    Ok(Some(Login {
        role: cred.username,
        password: state.config.open_sealed(&cred.sealed)?,
    }))
}

/// The app's own key-value user and password, when Norn has made one.
pub async fn kv_login(
    state: &WorkerState,
    app: &str,
) -> Result<Option<(String, String)>, ServicesError> {
    let mut conn = state.pool.acquire().await?;
    let Some(cred) = credentials::get(&mut conn, app, KV).await? else {
        return Ok(None);
    };
    Ok(Some((
        cred.username,
        state.config.open_sealed(&cred.sealed)?,
    )))
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

/// The app's secrets, opened.
async fn secret_values(
    state: &WorkerState,
    app: &str,
) -> Result<BTreeMap<String, String>, ServicesError> {
    let mut conn = state.pool.acquire().await?;
    // A preview runs with its parent's secrets.
    let parent = norn_shared::db::previews::parent_of(&mut conn, app).await?;
    let owner = norn_shared::preview::secrets_app(app, parent.as_deref());
    let mut sealed = secrets::sealed(&mut conn, owner).await?;
    if parent.is_some() {
        // Only those the preview's spec declares (`previews.secrets`).
        let declared = norn_shared::db::apps::get(&mut conn, app)
            .await
            .ok()
            .flatten()
            .map(|a| a.spec.secrets)
            .unwrap_or_default();
        sealed.retain(|(name, _)| declared.contains(name));
    }
    drop(conn);
    sealed
        .into_iter()
        .map(|(name, s)| Ok((name, state.config.open_sealed(&s)?)))
        .collect()
}

/// What must never show in the app's output as Norn keeps or streams it:
/// its secrets and its service passwords.
pub async fn masker(state: &WorkerState, app: &str) -> Result<Masker, ServicesError> {
    let mut values: Vec<String> = secret_values(state, app).await?.into_values().collect();
    values.extend(pg_login(state, app).await?.map(|l| l.password));
    values.extend(kv_login(state, app).await?.map(|(_, password)| password));
    Ok(Masker::new(values))
}

/// The spec's env, the app's secrets, `DATABASE_URL` of the app's own role
/// when it declares a database, `REDIS_URL` (its own user) and
/// `KV_NAMESPACE` when it declares a key-value namespace, and
/// `KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_TOPIC_PREFIX` and `KAFKA_TOPICS` when it
/// declares topics and Norn has brokers. A secret the spec lists but nobody
/// set stops the container from starting.
pub async fn app_env(
    state: &WorkerState,
    app: &str,
    spec: &InfraSpec,
) -> Result<BTreeMap<String, String>, ServicesError> {
    let mut env = spec.env.clone();
    let secrets = secret_values(state, app).await?;
    let missing: Vec<&str> = spec
        .secrets
        .iter()
        .filter(|name| !secrets.contains_key(*name))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(ServicesError::MissingSecrets(missing.join(", ")));
    }
    env.extend(secrets);
    if let Some(pg) = &spec.services.postgres {
        let login = require_pg_login(state, app, &pg.database).await?;
        let url = state
            .pg
            .container_url(&pg.database, &login)
            .map_err(|e| ServicesError::Url(e.to_string()))?;
        env.insert("DATABASE_URL".into(), url);
    }
    if let Some(kv) = &spec.services.kv {
        let server = state.kv.as_ref().ok_or(ServicesError::NoKvServer)?;
        let (user, password) = kv_login(state, app)
            .await?
            .ok_or_else(|| ServicesError::KvNotForged(kv.namespace.clone()))?;
        env.insert("REDIS_URL".into(), server.container_url(&user, &password));
        env.insert("KV_NAMESPACE".into(), kv.namespace.clone());
    }
    // Without brokers the forge skipped the topics and said so; the app
    // runs without them rather than not at all.
    if let (Some(events), Some(brokers)) = (&spec.services.events, &state.topics) {
        let topics: Vec<String> = events
            .topics
            .iter()
            .map(|t| norn_shared::brokers::topic_name(app, t))
            .collect();
        env.insert(
            "KAFKA_BOOTSTRAP_SERVERS".into(),
            brokers.container_brokers(),
        );
        env.insert(
            "KAFKA_TOPIC_PREFIX".into(),
            norn_shared::brokers::topic_name(app, ""),
        );
        env.insert("KAFKA_TOPICS".into(), topics.join(","));
    }
    Ok(env)
}
