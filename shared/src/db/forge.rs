//! `forge_states`: one row per app, its services' provisioning state. The
//! status only moves along [`ForgeStatus::can_become`]; writers hold the app
//! lease and write through a fenced transaction.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use sqlx::types::Json;

use crate::domain::{ForgeStatus, ForgeStepEntry, ForgedResources, IllegalForgeTransition};

/// An app's services as the last forge (or teardown) left them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForgeState {
    pub app: String,
    pub status: ForgeStatus,
    /// The steps of the last operation.
    pub steps: Vec<ForgeStepEntry>,
    pub resources: ForgedResources,
    pub error: Option<String>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST …/forge` and `…/teardown`: the operation queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForgeQueued {
    /// The job's id.
    pub id: String,
    pub app: String,
    pub action: crate::jobs::ForgeAction,
}

#[derive(sqlx::FromRow)]
struct Row {
    app: String,
    status: String,
    steps: Json<Vec<ForgeStepEntry>>,
    resources: Json<ForgedResources>,
    error: Option<String>,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ForgeDbError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Transition(#[from] IllegalForgeTransition),
    #[error("stored forge status: {0}")]
    Stored(String),
}

/// The app's forge state; an app never forged reads as `unforged`.
pub async fn get(conn: &mut PgConnection, app: &str) -> Result<ForgeState, ForgeDbError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT app, status, steps, resources, error, started_at, finished_at
         FROM forge_states WHERE app = $1",
    )
    .bind(app)
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        return Ok(ForgeState {
            app: app.to_owned(),
            status: ForgeStatus::Unforged,
            steps: Vec::new(),
            resources: ForgedResources::default(),
            error: None,
            started_at: None,
            finished_at: None,
        });
    };
    Ok(ForgeState {
        status: row.status.parse().map_err(ForgeDbError::Stored)?,
        app: row.app,
        steps: row.steps.0,
        resources: row.resources.0,
        error: row.error,
        started_at: row.started_at,
        finished_at: row.finished_at,
    })
}

/// Moves the app to `to` (checked against the current status under a row
/// lock). Starting an operation (`forging`, `tearing_down`) resets its steps,
/// error and times; ending one records `error` and the finish time.
pub async fn transition(
    conn: &mut PgConnection,
    app: &str,
    to: ForgeStatus,
    error: Option<&str>,
) -> Result<(), ForgeDbError> {
    sqlx::query("INSERT INTO forge_states (app) VALUES ($1) ON CONFLICT (app) DO NOTHING")
        .bind(app)
        .execute(&mut *conn)
        .await?;
    let (current,): (String,) =
        sqlx::query_as("SELECT status FROM forge_states WHERE app = $1 FOR UPDATE")
            .bind(app)
            .fetch_one(&mut *conn)
            .await?;
    let current: ForgeStatus = current.parse().map_err(ForgeDbError::Stored)?;
    current.transition(to)?;
    if to.is_busy() {
        sqlx::query(
            "UPDATE forge_states SET status = $2, steps = '[]', error = NULL,
                    started_at = now(), finished_at = NULL
             WHERE app = $1",
        )
        .bind(app)
        .bind(to.as_str())
        .execute(conn)
        .await?;
    } else {
        sqlx::query(
            "UPDATE forge_states SET status = $2, error = $3, finished_at = now() WHERE app = $1",
        )
        .bind(app)
        .bind(to.as_str())
        .bind(error)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Persists the steps so far and the resources made, after every step.
pub async fn record(
    conn: &mut PgConnection,
    app: &str,
    steps: &[ForgeStepEntry],
    resources: &ForgedResources,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE forge_states SET steps = $2, resources = $3 WHERE app = $1")
        .bind(app)
        .bind(Json(steps))
        .bind(Json(resources))
        .execute(conn)
        .await?;
    Ok(())
}
