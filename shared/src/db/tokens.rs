//! Named API tokens (`api_tokens`): a role each, an optional expiry, only
//! their SHA-256 stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

/// What a token may do. Each role includes the ones below it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    sqlx::Type,
    utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything but secret values.
    Viewer,
    /// Also deploys, rolls back, cancels, invokes functions, triggers cron.
    Deployer,
    /// Also registers apps, manages secrets, forges, tears down, restores,
    /// drains nodes and manages tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Deployer => "deployer",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// `POST /api/tokens`'s answer: the token's record and, this once, the token.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Made {
    #[serde(flatten)]
    pub record: Token,
    /// The bearer token itself; never shown again.
    pub token: String,
}

macro_rules! columns {
    () => {
        "id, name, role, created_by, created_at, expires_at, revoked_at, last_used_at"
    };
}

pub struct NewToken<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub role: Role,
    pub hash: &'a [u8],
    pub created_by: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Stores a token; `None` when the name is taken.
pub async fn create(
    conn: &mut PgConnection,
    new: &NewToken<'_>,
) -> Result<Option<Token>, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO api_tokens (id, name, role, token_hash, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (name) DO NOTHING
         RETURNING ",
        columns!()
    ))
    .bind(new.id)
    .bind(new.name)
    .bind(new.role)
    .bind(new.hash)
    .bind(new.created_by)
    .bind(new.expires_at)
    .fetch_optional(conn)
    .await
}

/// The live token with this hash (not revoked, not expired). Its
/// `last_used_at` is brought up to date at most once a minute, so a busy
/// token does not cost a write per request.
pub async fn authenticate(
    conn: &mut PgConnection,
    hash: &[u8],
) -> Result<Option<Token>, sqlx::Error> {
    sqlx::query_as(concat!(
        "WITH live AS (
             SELECT ",
        columns!(),
        " FROM api_tokens
             WHERE token_hash = $1 AND revoked_at IS NULL
               AND (expires_at IS NULL OR expires_at > now())),
         touched AS (
             UPDATE api_tokens SET last_used_at = now()
             WHERE id IN (SELECT id FROM live)
               AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute'))
         SELECT ",
        columns!(),
        " FROM live"
    ))
    .bind(hash)
    .fetch_optional(conn)
    .await
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<Token>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM api_tokens ORDER BY created_at, name"
    ))
    .fetch_all(conn)
    .await
}

/// Revokes the token named `name_or_id` (either); `None` when there is none.
pub async fn revoke(
    conn: &mut PgConnection,
    name_or_id: &str,
) -> Result<Option<Token>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
         WHERE name = $1 OR id = $1
         RETURNING ",
        columns!()
    ))
    .bind(name_or_id)
    .fetch_optional(conn)
    .await
}
