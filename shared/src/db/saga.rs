//! The append-only saga trail: one row per transition of every operation.

use serde::Serialize;
use sqlx::PgConnection;

#[derive(Debug, Clone, Serialize, serde::Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaEvent {
    pub id: i64,
    pub saga_id: String,
    pub app: String,
    pub category: String,
    pub action: String,
    pub step: Option<String>,
    pub message: String,
    pub actor: String,
    #[schema(value_type = Object)]
    pub metadata: sqlx::types::Json<serde_json::Value>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone)]
pub struct NewSagaEvent<'a> {
    pub saga_id: &'a str,
    pub app: &'a str,
    pub category: &'a str,
    pub action: &'a str,
    pub step: Option<&'a str>,
    pub message: &'a str,
    pub actor: &'a str,
    pub metadata: serde_json::Value,
}

pub async fn append(conn: &mut PgConnection, ev: NewSagaEvent<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO saga_events (saga_id, app, category, action, step, message, actor, metadata)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(ev.saga_id)
    .bind(ev.app)
    .bind(ev.category)
    .bind(ev.action)
    .bind(ev.step)
    .bind(ev.message)
    .bind(ev.actor)
    .bind(sqlx::types::Json(ev.metadata))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn for_saga(
    conn: &mut PgConnection,
    saga_id: &str,
) -> Result<Vec<SagaEvent>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM saga_events WHERE saga_id = $1 ORDER BY id")
        .bind(saga_id)
        .fetch_all(conn)
        .await
}

/// The newest events of one category for an app, e.g. cron incidents.
pub async fn recent_for_app(
    conn: &mut PgConnection,
    app: &str,
    actions: &[&str],
    limit: i64,
) -> Result<Vec<SagaEvent>, sqlx::Error> {
    let actions: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
    sqlx::query_as(
        "SELECT * FROM saga_events WHERE app = $1 AND action = ANY($2) ORDER BY id DESC LIMIT $3",
    )
    .bind(app)
    .bind(actions)
    .bind(limit)
    .fetch_all(conn)
    .await
}
