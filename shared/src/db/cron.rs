//! Cron state, ticks and executions.
//!
//! Exactly-once: a tick's key `(app, process, scheduled_at)` is inserted in
//! the transaction that enqueues its job, and an execution is inserted under
//! the same key, so neither a second scheduler nor a redelivered job can run a
//! tick twice.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::domain::CronExpr;
use crate::infraspec::InfraSpec;

/// NOTIFY channel: a cron state changed (deploy, pause, schedule); the
/// scheduler re-plans at once instead of at its next wake-up.
pub const CHANGED_CHANNEL: &str = "norn_cron";

/// How a cron execution stands or ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    TimedOut,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
        }
    }
}

/// What made a tick: its schedule, a catch-up after downtime, or a person.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
#[schema(as = CronTrigger)]
pub enum Trigger {
    Schedule,
    CatchUp,
    Manual,
}

/// A tick waits for a worker, has started an execution, or was skipped.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum TickState {
    Queued,
    Started,
    Skipped,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronState {
    pub app: String,
    pub process: Option<String>,
    pub schedule: String,
    pub timezone: Option<String>,
    pub schedule_override: Option<String>,
    pub paused: bool,
    pub image_tag: Option<String>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_scheduled_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl CronState {
    /// The expression in force: the API override, else the infraspec's.
    pub fn expression(&self) -> &str {
        self.schedule_override.as_deref().unwrap_or(&self.schedule)
    }

    pub fn cron(&self) -> Result<CronExpr, String> {
        CronExpr::parse(self.expression(), self.timezone.as_deref())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = CronExecution)]
pub struct Execution {
    pub id: i64,
    pub app: String,
    pub process: Option<String>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub trigger: Option<Trigger>,
    pub image_tag: Option<String>,
    pub status: RunStatus,
    pub exit_code: Option<i32>,
    pub output: Option<String>,
    pub duration_ms: Option<i64>,
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    pub container_started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tick {
    pub app: String,
    pub process: String,
    pub scheduled_at: DateTime<Utc>,
    pub trigger: Trigger,
    pub state: TickState,
    pub reason: Option<String>,
    pub enqueued_at: DateTime<Utc>,
}

/// A cron app's schedule as it stands (`GET …/cron`'s `state`, and what
/// pause, resume and a schedule override answer).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronView {
    pub process: Option<String>,
    /// The expression in force: the override, else the infraspec's.
    pub schedule: String,
    pub spec_schedule: String,
    pub schedule_override: Option<String>,
    pub timezone: Option<String>,
    pub paused: bool,
    /// The image its runs use (the app's deployed one).
    pub image_tag: Option<String>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_scheduled_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl From<&CronState> for CronView {
    fn from(s: &CronState) -> Self {
        Self {
            process: s.process.clone(),
            schedule: s.expression().to_owned(),
            spec_schedule: s.schedule.clone(),
            schedule_override: s.schedule_override.clone(),
            timezone: s.timezone.clone(),
            paused: s.paused,
            image_tag: s.image_tag.clone(),
            next_run_at: s.next_run_at,
            last_scheduled_at: s.last_scheduled_at,
            updated_at: s.updated_at,
        }
    }
}

/// `GET /api/apps/{id}/cron`: the schedule, its policy, recent runs,
/// skipped ticks and incidents (missed ticks, lost runs).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronOverview {
    pub app: String,
    pub process: String,
    pub policy: crate::infraspec::CronPolicy,
    /// Absent until the app's first deploy.
    pub state: Option<CronView>,
    pub executions: Vec<Execution>,
    pub skipped: Vec<Tick>,
    pub incidents: Vec<super::saga::SagaEvent>,
}

/// `POST /api/apps/{id}/cron/trigger`: the tick queued.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronTriggered {
    pub app: String,
    pub process: String,
    pub scheduled_at: DateTime<Utc>,
    pub trigger: Trigger,
}

async fn notify(conn: &mut PgConnection, app: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANGED_CHANNEL)
        .bind(app)
        .execute(conn)
        .await?;
    Ok(())
}

/// After a successful deploy: the scheduler runs the new image from now on.
/// Pause and a schedule override are kept; an app that no longer has a
/// scheduled process loses its cron state.
pub async fn sync_from_deploy(
    conn: &mut PgConnection,
    spec: &InfraSpec,
    image_tag: &str,
) -> Result<(), sqlx::Error> {
    let app = spec.name.as_str();
    let scheduled = spec
        .processes
        .iter()
        .find_map(|(name, p)| p.schedule.as_ref().map(|s| (name, s)));
    match scheduled {
        None => {
            sqlx::query("DELETE FROM cron_states WHERE app = $1")
                .bind(app)
                .execute(&mut *conn)
                .await?;
        }
        Some((process, schedule)) => {
            sqlx::query(
                "INSERT INTO cron_states (app, process, schedule, timezone, image_tag, last_scheduled_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, now(), now())
                 ON CONFLICT (app) DO UPDATE SET
                    process = EXCLUDED.process, schedule = EXCLUDED.schedule,
                    timezone = EXCLUDED.timezone, image_tag = EXCLUDED.image_tag,
                    last_scheduled_at = COALESCE(cron_states.last_scheduled_at, now()),
                    updated_at = now()",
            )
            .bind(app)
            .bind(process)
            .bind(&schedule.expression)
            .bind(&schedule.timezone)
            .bind(image_tag)
            .execute(&mut *conn)
            .await?;
        }
    }
    notify(conn, app).await
}

/// Creates the state of a cron app that was never deployed, so it can be
/// paused or given an override before its first run.
pub async fn ensure(
    conn: &mut PgConnection,
    app: &str,
    process: &str,
    schedule: &crate::infraspec::Schedule,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cron_states (app, process, schedule, timezone) VALUES ($1, $2, $3, $4)
         ON CONFLICT (app) DO NOTHING",
    )
    .bind(app)
    .bind(process)
    .bind(&schedule.expression)
    .bind(&schedule.timezone)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, app: &str) -> Result<Option<CronState>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM cron_states WHERE app = $1")
        .bind(app)
        .fetch_optional(conn)
        .await
}

/// Locks the state row for the rest of the transaction.
pub async fn lock(conn: &mut PgConnection, app: &str) -> Result<Option<CronState>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM cron_states WHERE app = $1 FOR UPDATE")
        .bind(app)
        .fetch_optional(conn)
        .await
}

/// States the scheduler should plan: running apps with an image.
pub async fn active(conn: &mut PgConnection) -> Result<Vec<CronState>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM cron_states WHERE NOT paused AND image_tag IS NOT NULL AND process IS NOT NULL
         ORDER BY app",
    )
    .fetch_all(conn)
    .await
}

pub async fn set_paused(
    conn: &mut PgConnection,
    app: &str,
    paused: bool,
) -> Result<Option<CronState>, sqlx::Error> {
    // Resuming starts from now: ticks that passed while paused are not "missed".
    let state = sqlx::query_as(
        "UPDATE cron_states SET paused = $2, updated_at = now(),
            last_scheduled_at = CASE WHEN paused AND NOT $2 THEN now() ELSE last_scheduled_at END
         WHERE app = $1 RETURNING *",
    )
    .bind(app)
    .bind(paused)
    .fetch_optional(&mut *conn)
    .await?;
    notify(conn, app).await?;
    Ok(state)
}

/// `None` clears the override (back to the infraspec's schedule).
pub async fn set_override(
    conn: &mut PgConnection,
    app: &str,
    schedule: Option<&str>,
) -> Result<Option<CronState>, sqlx::Error> {
    let state = sqlx::query_as(
        "UPDATE cron_states SET schedule_override = $2, updated_at = now()
         WHERE app = $1 RETURNING *",
    )
    .bind(app)
    .bind(schedule)
    .fetch_optional(&mut *conn)
    .await?;
    notify(conn, app).await?;
    Ok(state)
}

pub async fn set_planned(
    conn: &mut PgConnection,
    app: &str,
    last_scheduled_at: DateTime<Utc>,
    next_run_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE cron_states SET last_scheduled_at = $2, next_run_at = $3 WHERE app = $1")
        .bind(app)
        .bind(last_scheduled_at)
        .bind(next_run_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a tick; false when it was already recorded (by this or another
/// scheduler), in which case the caller must not enqueue it.
pub async fn record_tick(
    conn: &mut PgConnection,
    app: &str,
    process: &str,
    scheduled_at: DateTime<Utc>,
    trigger: Trigger,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO cron_ticks (app, process, scheduled_at, trigger) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(app)
    .bind(process)
    .bind(scheduled_at)
    .bind(trigger)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn recent_executions(
    conn: &mut PgConnection,
    app: &str,
    limit: i64,
) -> Result<Vec<Execution>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, app, process, scheduled_at, trigger, image_tag, status, exit_code, output,
                duration_ms, reason, started_at, container_started_at, finished_at
         FROM cron_executions WHERE app = $1 ORDER BY started_at DESC, id DESC LIMIT $2",
    )
    .bind(app)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Ticks that did not run: skipped by the overlap policy.
pub async fn recent_skipped(
    conn: &mut PgConnection,
    app: &str,
    limit: i64,
) -> Result<Vec<Tick>, sqlx::Error> {
    sqlx::query_as(
        "SELECT app, process, scheduled_at, trigger, state, reason, enqueued_at FROM cron_ticks
         WHERE app = $1 AND state = 'skipped' ORDER BY scheduled_at DESC LIMIT $2",
    )
    .bind(app)
    .bind(limit)
    .fetch_all(conn)
    .await
}
