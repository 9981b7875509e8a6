//! Webhook deliveries (`webhook_deliveries`) and per-app webhook secrets
//! (`app_webhook_secrets`, sealed).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use crate::crypto::Sealed;
use crate::webhook::{Change, Provider};

/// What became of a delivery.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Verified, not yet acted on (rows are written in their final state in
    /// the transaction that acts, so a row stays here only if that failed).
    Received,
    /// Verified; nothing to do (the reason says why).
    Ignored,
    /// Not signed with the secret Norn holds: nothing of it was acted on.
    Rejected,
    /// Verified; it queued `deployment_id`.
    Deploying,
    /// An admin replayed an earlier delivery (`replay_of`); it queued `deployment_id`.
    Replayed,
    /// Verified; a pull request closed, so its preview is being torn down.
    TearingDown,
}

impl std::str::FromStr for DeliveryStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| {
            format!(
                "{s:?} is not a delivery status (received, ignored, rejected, deploying, replayed)"
            )
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRow {
    pub id: String,
    pub provider: Provider,
    pub delivery_id: String,
    pub event: String,
    pub app: Option<String>,
    pub status: DeliveryStatus,
    pub reason: Option<String>,
    /// What the verified payload said; absent for a rejected delivery.
    #[schema(value_type = Option<Change>)]
    pub change: Option<Json<Change>>,
    pub deployment_id: Option<String>,
    pub replay_of: Option<String>,
    pub actor: String,
    pub received_at: DateTime<Utc>,
}

macro_rules! columns {
    () => {
        "id, provider, delivery_id, event, app, status, reason, change, deployment_id, \
         replay_of, actor, received_at"
    };
}

pub struct NewDelivery<'a> {
    pub id: &'a str,
    pub provider: Provider,
    pub delivery_id: &'a str,
    pub event: &'a str,
    pub app: Option<&'a str>,
    pub status: DeliveryStatus,
    pub reason: Option<&'a str>,
    pub change: Option<&'a Change>,
    pub deployment_id: Option<&'a str>,
    pub replay_of: Option<&'a str>,
    pub actor: &'a str,
}

/// Records a delivery. `false` when it is a second `deploying` row for the
/// same forge delivery and app: a redelivery, which must not deploy again.
pub async fn insert(conn: &mut PgConnection, d: &NewDelivery<'_>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO webhook_deliveries
             (id, provider, delivery_id, event, app, status, reason, change, deployment_id,
              replay_of, actor)
         VALUES ($1, $2, $3, $4, $5, $6, left($7, 2000), $8, $9, $10, $11)
         ON CONFLICT (provider, delivery_id, app) WHERE status = 'deploying' DO NOTHING",
    )
    .bind(d.id)
    .bind(d.provider)
    .bind(d.delivery_id)
    .bind(d.event)
    .bind(d.app)
    .bind(d.status)
    .bind(d.reason)
    .bind(d.change.map(Json))
    .bind(d.deployment_id)
    .bind(d.replay_of)
    .bind(d.actor)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The delivery that already deployed `app` for this forge delivery id.
pub async fn deployed_by(
    conn: &mut PgConnection,
    provider: Provider,
    delivery_id: &str,
    app: &str,
) -> Result<Option<DeliveryRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM webhook_deliveries
          WHERE provider = $1 AND delivery_id = $2 AND app = $3 AND status = 'deploying'"
    ))
    .bind(provider)
    .bind(delivery_id)
    .bind(app)
    .fetch_optional(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<DeliveryRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM webhook_deliveries WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub struct ListFilter<'a> {
    pub app: Option<&'a str>,
    pub status: Option<DeliveryStatus>,
    pub limit: i64,
}

/// Newest first.
pub async fn list(
    conn: &mut PgConnection,
    f: &ListFilter<'_>,
) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM webhook_deliveries
          WHERE ($1::text IS NULL OR app = $1) AND ($2::text IS NULL OR status = $2)
          ORDER BY received_at DESC, id LIMIT $3"
    ))
    .bind(f.app)
    .bind(f.status)
    .bind(f.limit)
    .fetch_all(conn)
    .await
}

/// How long deliveries are kept.
pub const RETENTION_DAYS: i32 = 30;
/// Rejected deliveries come from anyone who finds the URL: they are kept
/// for a week, and at most this many.
pub const MAX_REJECTED: i64 = 1000;

/// Deletes deliveries past their retention; returns how many.
pub async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let old = sqlx::query(
        "DELETE FROM webhook_deliveries
         WHERE received_at < now() - make_interval(days => $1)
            OR (status = 'rejected' AND received_at < now() - interval '7 days')",
    )
    .bind(RETENTION_DAYS)
    .execute(pool)
    .await?;
    let surplus = sqlx::query(
        "DELETE FROM webhook_deliveries WHERE id IN (
             SELECT id FROM webhook_deliveries WHERE status = 'rejected'
             ORDER BY received_at DESC OFFSET $1)",
    )
    .bind(MAX_REJECTED)
    .execute(pool)
    .await?;
    Ok(old.rows_affected() + surplus.rows_affected())
}

/// The app's own webhook secret, sealed; `None`: the app uses the global one.
pub async fn secret(conn: &mut PgConnection, app: &str) -> Result<Option<Sealed>, sqlx::Error> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT sealed, key_id FROM app_webhook_secrets WHERE app = $1")
            .bind(app)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(data, key_id)| Sealed { key_id, data }))
}

pub async fn put_secret(
    conn: &mut PgConnection,
    app: &str,
    sealed: &Sealed,
    by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO app_webhook_secrets (app, sealed, key_id, updated_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (app) DO UPDATE SET sealed = excluded.sealed, key_id = excluded.key_id,
                                         updated_by = excluded.updated_by, updated_at = now()",
    )
    .bind(app)
    .bind(&sealed.data)
    .bind(&sealed.key_id)
    .bind(by)
    .execute(conn)
    .await?;
    Ok(())
}

/// `true` when the app had a secret of its own.
pub async fn delete_secret(conn: &mut PgConnection, app: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM app_webhook_secrets WHERE app = $1")
        .bind(app)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}
