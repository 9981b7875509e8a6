//! App secrets, sealed. Names and times can be listed; values only opened
//! by a process holding the key, on the way into the app's containers.

use serde::Serialize;
use sqlx::PgConnection;

use crate::crypto::Sealed;

#[derive(Debug, Clone, Serialize, serde::Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretName {
    pub name: String,
    pub key_id: String,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// `PUT /api/apps/{id}/secrets`'s answer: the names set.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SecretsSet {
    pub app: String,
    pub set: Vec<String>,
}

/// `POST /api/secrets/rotate`'s answer.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rotated {
    /// Values sealed anew with the current key.
    pub resealed: usize,
    pub key_id: String,
}

pub async fn names(conn: &mut PgConnection, app: &str) -> Result<Vec<SecretName>, sqlx::Error> {
    sqlx::query_as("SELECT name, key_id, updated_at FROM app_secrets WHERE app = $1 ORDER BY name")
        .bind(app)
        .fetch_all(conn)
        .await
}

/// Every secret of `app`, sealed, by name.
pub async fn sealed(
    conn: &mut PgConnection,
    app: &str,
) -> Result<Vec<(String, Sealed)>, sqlx::Error> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT name, sealed, key_id FROM app_secrets WHERE app = $1 ORDER BY name")
            .bind(app)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(name, data, key_id)| (name, Sealed { key_id, data }))
        .collect())
}

pub async fn put(
    conn: &mut PgConnection,
    app: &str,
    name: &str,
    sealed: &Sealed,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO app_secrets (app, name, sealed, key_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (app, name) DO UPDATE
            SET sealed = excluded.sealed, key_id = excluded.key_id, updated_at = now()",
    )
    .bind(app)
    .bind(name)
    .bind(&sealed.data)
    .bind(&sealed.key_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// `true` when there was such a secret.
pub async fn delete(conn: &mut PgConnection, app: &str, name: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM app_secrets WHERE app = $1 AND name = $2")
        .bind(app)
        .bind(name)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn count(conn: &mut PgConnection, app: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM app_secrets WHERE app = $1")
        .bind(app)
        .fetch_one(conn)
        .await
}

/// A sealed value somewhere in Norn's tables, for a key rotation.
#[derive(Debug, Clone)]
pub struct SealedRow {
    pub table: &'static str,
    pub app: String,
    /// The secret's name, or the service of a credential.
    pub name: String,
    pub sealed: Sealed,
}

/// Every sealed value not sealed with `key_id`, locked for the caller's
/// transaction.
pub async fn sealed_with_other_keys(
    conn: &mut PgConnection,
    key_id: &str,
) -> Result<Vec<SealedRow>, sqlx::Error> {
    let secrets: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT app, name, sealed, key_id FROM app_secrets WHERE key_id <> $1 FOR UPDATE",
    )
    .bind(key_id)
    .fetch_all(&mut *conn)
    .await?;
    let creds: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT app, service, sealed, key_id FROM service_credentials WHERE key_id <> $1 FOR UPDATE",
    )
    .bind(key_id)
    .fetch_all(&mut *conn)
    .await?;
    let hooks: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT app, 'webhook', sealed, key_id FROM app_webhook_secrets WHERE key_id <> $1 FOR UPDATE",
    )
    .bind(key_id)
    .fetch_all(&mut *conn)
    .await?;
    let row = |table| {
        move |(app, name, data, key_id): (String, String, String, String)| SealedRow {
            table,
            app,
            name,
            sealed: Sealed { key_id, data },
        }
    };
    Ok(secrets
        .into_iter()
        .map(row("app_secrets"))
        .chain(creds.into_iter().map(row("service_credentials")))
        .chain(hooks.into_iter().map(row("app_webhook_secrets")))
        .collect())
}

/// Stores `row` sealed anew.
pub async fn reseal(
    conn: &mut PgConnection,
    row: &SealedRow,
    sealed: &Sealed,
) -> Result<(), sqlx::Error> {
    let sql = match row.table {
        "app_secrets" => {
            "UPDATE app_secrets SET sealed = $3, key_id = $4 WHERE app = $1 AND name = $2"
        }
        "app_webhook_secrets" => {
            "UPDATE app_webhook_secrets SET sealed = $3, key_id = $4 WHERE app = $1 AND $2 <> ''"
        }
        _ => {
            "UPDATE service_credentials SET sealed = $3, key_id = $4 WHERE app = $1 AND service = $2"
        }
    };
    sqlx::query(sql)
        .bind(&row.app)
        .bind(&row.name)
        .bind(&sealed.data)
        .bind(&sealed.key_id)
        .execute(conn)
        .await?;
    Ok(())
}
