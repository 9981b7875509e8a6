//! Function executions (`func_executions`): one row per invocation, from the
//! moment the API accepts it to the moment a worker (or the sweep) ends it.
//!
//! Slots: at most `concurrency` executions of one function are running or
//! dispatched (a job in the function queue) at once; the rest wait `queued`,
//! oldest first. Every change to a function's slots happens under one
//! advisory lock per (app, function), taken *before* any row lock, so
//! accepting, ending and cancelling never deadlock and never over-dispatch.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::events::{self, Event, EventBody};
use crate::jobs::FunctionJob;
use crate::queue::{self, Queue, QueueError};

/// NOTIFY channel: an execution was asked to stop (payload: its id). The
/// worker running it LISTENs and kills the container.
pub const CANCEL_CHANNEL: &str = "norn_func_cancel";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
#[schema(as = FunctionStatus)]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Canceled,
}

impl Status {
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Canceled => "canceled",
        }
    }
}

/// How the caller waits: for the result (`sync`) or not (`async`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
#[schema(as = FunctionTrigger)]
pub enum Trigger {
    Sync,
    Async,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = FunctionExecution)]
pub struct Execution {
    pub id: i64,
    pub app: String,
    pub process: String,
    pub status: Status,
    pub trigger: Trigger,
    pub invoked_by: String,
    pub image_tag: Option<String>,
    pub exit_code: Option<i32>,
    /// The output's end (at most 1 MiB), secrets masked; absent from lists.
    pub output: Option<String>,
    pub output_truncated: bool,
    pub reason: Option<String>,
    pub duration_ms: Option<i64>,
    pub request_method: String,
    pub request_path: String,
    pub request_query: String,
    pub content_type: Option<String>,
    pub node: Option<String>,
    pub container: Option<String>,
    pub cancel_requested: bool,
    pub timeout_ms: i64,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub deadline_at: Option<DateTime<Utc>>,
}

/// A sync invocation's answer: how the run ended and what it printed.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvokeResult {
    pub id: i64,
    pub status: Status,
    pub exit_code: Option<i32>,
    /// The output's end (at most 1 MiB), secrets masked.
    pub output: Option<String>,
    pub output_truncated: bool,
    pub duration_ms: Option<i64>,
    pub reason: Option<String>,
}

impl From<&Execution> for InvokeResult {
    fn from(e: &Execution) -> Self {
        Self {
            id: e.id,
            status: e.status,
            exit_code: e.exit_code,
            output: e.output.clone(),
            output_truncated: e.output_truncated,
            duration_ms: e.duration_ms,
            reason: e.reason.clone(),
        }
    }
}

/// The run goes on without the caller (an async invocation, or a sync one
/// whose wait ran out): poll `location`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvokeAccepted {
    pub id: i64,
    pub status: Status,
    pub location: String,
}

/// A cancel of a running execution: its worker stops it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelRequested {
    pub id: i64,
    /// Still `running` until its worker ends it `canceled`.
    pub status: Status,
    pub cancel_requested: bool,
}

macro_rules! columns {
    ($output:literal) => {
        concat!(
            "id, app, process, status, trigger, invoked_by, image_tag, exit_code, ",
            $output,
            ", output_truncated, reason, duration_ms, request_method, request_path, request_query,
             content_type, node, container, cancel_requested, timeout_ms, queued_at, started_at,
             finished_at, deadline_at"
        )
    };
}

/// What the API accepted.
pub struct NewInvocation<'a> {
    pub app: &'a str,
    pub process: &'a str,
    pub trigger: Trigger,
    pub invoked_by: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub input: &'a [u8],
    pub image_tag: &'a str,
    pub timeout_ms: i64,
    pub concurrency: u32,
    /// How many may wait beyond `concurrency` before callers get 429.
    pub backlog: u32,
}

pub enum Invoked {
    Accepted(i64),
    /// `concurrency + backlog` executions are already waiting or running.
    Full {
        active: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Serialises every change to one function's slots (transaction-scoped).
async fn lock_function(
    conn: &mut PgConnection,
    app: &str,
    process: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('func:' || $1 || ':' || $2, 0))")
        .bind(app)
        .bind(process)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records an invocation and dispatches it when a slot is free, in the
/// caller's transaction (the row and its job commit together).
pub async fn invoke(
    conn: &mut PgConnection,
    new: &NewInvocation<'_>,
) -> Result<Invoked, FunctionError> {
    lock_function(conn, new.app, new.process).await?;
    let (active,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM func_executions
         WHERE app = $1 AND process = $2 AND status IN ('queued', 'running')",
    )
    .bind(new.app)
    .bind(new.process)
    .fetch_one(&mut *conn)
    .await?;
    if active >= i64::from(new.concurrency) + i64::from(new.backlog) {
        return Ok(Invoked::Full { active });
    }
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO func_executions (app, process, status, trigger, invoked_by, request_method,
             request_path, request_query, content_type, input, image_tag, timeout_ms, queued_at)
         VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, clock_timestamp())
         RETURNING id",
    )
    .bind(new.app)
    .bind(new.process)
    .bind(new.trigger)
    .bind(new.invoked_by)
    .bind(new.method)
    .bind(new.path)
    .bind(new.query)
    .bind(new.content_type)
    .bind(new.input)
    .bind(new.image_tag)
    .bind(new.timeout_ms)
    .fetch_one(&mut *conn)
    .await?;
    dispatch_free(conn, new.app, new.process, new.concurrency).await?;
    Ok(Invoked::Accepted(id))
}

/// Hands the free slots of a function to its oldest waiting executions: one
/// job each in the function queue. The caller holds the function's lock.
async fn dispatch_free(
    conn: &mut PgConnection,
    app: &str,
    process: &str,
    concurrency: u32,
) -> Result<(), FunctionError> {
    let dispatched: Vec<(i64,)> = sqlx::query_as(
        "UPDATE func_executions SET dispatched = true WHERE id IN (
             SELECT id FROM func_executions
             WHERE app = $1 AND process = $2 AND status = 'queued' AND NOT dispatched
             ORDER BY queued_at, id
             LIMIT greatest(0, $3 - (
                 SELECT count(*) FROM func_executions
                 WHERE app = $1 AND process = $2
                   AND (status = 'running' OR (status = 'queued' AND dispatched)))))
         RETURNING id",
    )
    .bind(app)
    .bind(process)
    .bind(i64::from(concurrency))
    .fetch_all(&mut *conn)
    .await?;
    for (id,) in dispatched {
        let job = FunctionJob {
            execution_id: id,
            app: app.to_owned(),
        };
        queue::enqueue(conn, Queue::Function, &job, Some(&format!("func:{id}"))).await?;
    }
    Ok(())
}

/// What a worker needs to run a started execution.
pub struct Started {
    pub execution: Execution,
    pub input: Vec<u8>,
}

/// Takes a queued execution for this worker (`node`): `None` when it is no
/// longer queued (cancelled, or a redelivered job of one already started),
/// so an execution never starts twice. Publishes `func.started`.
pub async fn start(
    conn: &mut PgConnection,
    id: i64,
    node: &str,
    container: &str,
) -> Result<Option<Started>, sqlx::Error> {
    let row: Option<(Vec<u8>,)> = sqlx::query_as(
        "UPDATE func_executions SET status = 'running', node = $2, container = $3,
             started_at = clock_timestamp(),
             deadline_at = clock_timestamp() + make_interval(secs => timeout_ms / 1000.0)
         WHERE id = $1 AND status = 'queued'
         RETURNING coalesce(input, ''::bytea)",
    )
    .bind(id)
    .bind(node)
    .bind(container)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((input,)) = row else {
        return Ok(None);
    };
    let Some(execution) = get(conn, id).await? else {
        return Ok(None);
    };
    let started = EventBody::FuncStarted(events::FuncStarted {
        execution_id: id,
        process: execution.process.clone(),
        node: node.to_owned(),
        image_tag: execution.image_tag.clone(),
    });
    events::publish(conn, &Event::new(&execution.app, started)).await?;
    Ok(Some(Started { execution, input }))
}

/// How an execution ended.
pub struct Outcome {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub output: Option<String>,
    pub output_truncated: bool,
    pub reason: Option<String>,
}

impl Outcome {
    pub fn failed(status: Status, reason: impl Into<String>) -> Self {
        Self {
            status,
            exit_code: None,
            output: None,
            output_truncated: false,
            reason: Some(reason.into()),
        }
    }
}

/// The one way an execution ends (worker, cancel, sweep): records the
/// outcome unless it already ended, drops the kept request body, hands the
/// freed slot on and publishes `func.completed` or `func.failed`. `None`:
/// it had already ended (or never existed); nothing changed.
pub async fn end(
    conn: &mut PgConnection,
    id: i64,
    outcome: &Outcome,
    concurrency: u32,
) -> Result<Option<Execution>, FunctionError> {
    let Some((app, process)) = sqlx::query_as::<_, (String, String)>(
        "SELECT app, process FROM func_executions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    lock_function(conn, &app, &process).await?;
    let ended: Option<Execution> = sqlx::query_as(concat!(
        "UPDATE func_executions SET status = $2, exit_code = $3, output = $4,
             output_truncated = $5, reason = $6, input = NULL, finished_at = clock_timestamp(),
             duration_ms = CASE WHEN started_at IS NULL THEN NULL
                 ELSE (extract(epoch FROM clock_timestamp() - started_at) * 1000)::bigint END
         WHERE id = $1 AND status IN ('queued', 'running')
         RETURNING ",
        columns!("NULL::text AS output")
    ))
    .bind(id)
    .bind(outcome.status)
    .bind(outcome.exit_code)
    .bind(outcome.output.as_deref().map(crate::text::storable))
    .bind(outcome.output_truncated)
    .bind(&outcome.reason)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(ended) = ended else {
        return Ok(None);
    };
    dispatch_free(conn, &app, &process, concurrency).await?;
    let payload = events::FuncEnded {
        execution_id: id,
        process,
        status: ended.status,
        exit_code: ended.exit_code,
        duration_ms: ended.duration_ms,
        reason: ended.reason.clone(),
    };
    let body = if ended.status == Status::Succeeded {
        EventBody::FuncCompleted(payload)
    } else {
        EventBody::FuncFailed(payload)
    };
    events::publish(conn, &Event::new(&app, body)).await?;
    Ok(Some(ended))
}

pub async fn get(conn: &mut PgConnection, id: i64) -> Result<Option<Execution>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!("output"),
        " FROM func_executions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// An app's executions, newest first, without their output.
pub async fn list(
    conn: &mut PgConnection,
    app: &str,
    process: Option<&str>,
    status: Option<Status>,
    limit: i64,
) -> Result<Vec<Execution>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!("NULL::text AS output"),
        " FROM func_executions
         WHERE app = $1 AND ($2::text IS NULL OR process = $2) AND ($3::text IS NULL OR status = $3)
         ORDER BY id DESC LIMIT $4"
    ))
    .bind(app)
    .bind(process)
    .bind(status)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Asks the worker running `id` to stop it (NOTIFY, in the caller's
/// transaction). False when it is not running.
pub async fn request_cancel(conn: &mut PgConnection, id: i64) -> Result<bool, sqlx::Error> {
    let marked = sqlx::query(
        "UPDATE func_executions SET cancel_requested = true WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if marked == 1 {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CANCEL_CHANNEL)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(marked == 1)
}

/// Of `ids`, those asked to stop (a worker re-checks after its LISTEN
/// connection was re-established and may have missed a NOTIFY).
pub async fn cancel_requested_among(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<Vec<i64>, sqlx::Error> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM func_executions WHERE id = ANY($1) AND cancel_requested AND status = 'running'",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Of `found` (execution id, the node that ran it, as a container's labels
/// say), the executions that ended: their containers can go. Matching the
/// node too means a container of another Norn installation sharing the
/// engine (another database, the same ids) is never taken for one of ours.
pub async fn ended_among(
    conn: &mut PgConnection,
    found: &[(i64, String)],
) -> Result<Vec<i64>, sqlx::Error> {
    let (ids, nodes): (Vec<i64>, Vec<String>) = found.iter().cloned().unzip();
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT f.id FROM unnest($1::bigint[], $2::text[]) AS x(id, node)
         JOIN func_executions f ON f.id = x.id AND f.node = x.node
         WHERE f.status NOT IN ('queued', 'running')",
    )
    .bind(&ids)
    .bind(&nodes)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Why a running execution will never be ended by its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// Its worker stopped beating (killed, or its host gone).
    Worker,
    /// Its worker lives but the run is long past its deadline without a
    /// result (a worker that failed to record it).
    NoResult,
    /// It waits for a job that will never run: the job failed on every
    /// attempt (or is gone), so the run would hold its slot forever.
    JobFailed,
}

impl Lost {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Worker => "worker lost",
            Self::NoResult => "no result from its worker past the deadline",
            Self::JobFailed => {
                "its job failed on every attempt before the run could start (see the worker's log)"
            }
        }
    }
}

/// Executions no worker will end: running ones whose worker is gone (no
/// heartbeat for `after`, or removed) or which are `after` past their
/// deadline, and dispatched ones whose job is dead.
pub async fn lost(
    conn: &mut PgConnection,
    after: std::time::Duration,
) -> Result<Vec<(i64, String, String, Lost)>, sqlx::Error> {
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT f.id, f.app, f.process,
                CASE WHEN NOT EXISTS (SELECT 1 FROM cluster_nodes n
                            WHERE n.id = f.node AND n.status IN ('ready', 'draining')
                              AND n.last_heartbeat_at > now() - make_interval(secs => $1))
                     THEN 'worker' ELSE 'deadline' END
         FROM func_executions f
         WHERE f.status = 'running'
           AND f.started_at < now() - interval '10 seconds'
           AND (f.deadline_at < now() - make_interval(secs => $1)
                OR NOT EXISTS (SELECT 1 FROM cluster_nodes n
                               WHERE n.id = f.node AND n.status IN ('ready', 'draining')
                                 AND n.last_heartbeat_at > now() - make_interval(secs => $1)))
         UNION ALL
         SELECT f.id, f.app, f.process, 'job'
         FROM func_executions f
         WHERE f.status = 'queued' AND f.dispatched
           AND f.queued_at < now() - make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM apalis.jobs j
                           WHERE j.job_type = $2 AND j.idempotency_key = 'func:' || f.id
                             AND (j.status IN ('Pending', 'Queued', 'Running')
                                  OR (j.status = 'Failed' AND j.attempts < j.max_attempts)))",
    )
    .bind(after.as_secs_f64())
    .bind(Queue::Function.name())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, app, process, why)| {
            let why = match why.as_str() {
                "worker" => Lost::Worker,
                "job" => Lost::JobFailed,
                _ => Lost::NoResult,
            };
            (id, app, process, why)
        })
        .collect())
}

/// A function's `concurrency` as its app's spec says now (the default when
/// the app or the function is gone, so waiting executions still drain).
pub async fn concurrency_of(conn: &mut PgConnection, app: &str, process: &str) -> u32 {
    crate::db::apps::get(conn, app)
        .await
        .ok()
        .flatten()
        .and_then(|a| {
            a.spec
                .processes
                .get(process)?
                .function
                .as_ref()
                .map(|f| f.concurrency)
        })
        .unwrap_or(10)
}

/// Deletes runs that ended more than `retention` ago, a batch at a time
/// (each row may hold a MiB of output); runs still waiting or running are
/// never touched. Returns how many went.
pub async fn prune(
    pool: &sqlx::PgPool,
    retention: std::time::Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM func_executions WHERE id IN (
                 SELECT id FROM func_executions
                 WHERE finished_at IS NOT NULL
                   AND finished_at < now() - make_interval(secs => $1)
                 ORDER BY finished_at LIMIT $2)",
        )
        .bind(retention.as_secs_f64())
        .bind(batch)
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < batch as u64 {
            return Ok(total);
        }
    }
}
