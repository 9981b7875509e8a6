//! The change runner's tracking tables, in the app's own database (not
//! Norn's): `__norn_version__`, `__norn_change__`, `__norn_executions__`
//! and `__norn_lock__`, with the columns, statuses and skip reasons of the
//! seed's schema-change tracker. Created on first use; their own schema
//! version is the row of `__norn_version__`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, PgConnection};

/// The tracking tables' own schema version.
pub const SCHEMA_VERSION: i32 = 1;

const SETUP: &str = r#"
CREATE TABLE IF NOT EXISTS __norn_version__ (
    id             serial PRIMARY KEY,
    norn_version   varchar(50) NOT NULL,
    schema_version integer NOT NULL,
    installed_at   timestamptz NOT NULL DEFAULT now(),
    upgraded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS __norn_change__ (
    id            serial PRIMARY KEY,
    name          varchar(255) NOT NULL,
    change_type   varchar(50) NOT NULL DEFAULT 'changeset',
    direction     varchar(50) NOT NULL CHECK (direction IN ('change', 'revert')),
    checksum      varchar(64) NOT NULL DEFAULT '',
    executed_at   timestamptz NOT NULL DEFAULT now(),
    executed_by   varchar(255) NOT NULL DEFAULT '',
    app           varchar(255) NOT NULL DEFAULT '',
    norn_version  varchar(50) NOT NULL DEFAULT '',
    status        varchar(50) NOT NULL CHECK (status IN ('pending', 'success', 'failed', 'reverted')),
    error_message text NOT NULL DEFAULT '',
    duration_ms   integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS __norn_change_name ON __norn_change__ (name, id);
CREATE TABLE IF NOT EXISTS __norn_executions__ (
    id            serial PRIMARY KEY,
    change_id     integer NOT NULL REFERENCES __norn_change__ (id) ON DELETE CASCADE,
    filepath      varchar(500) NOT NULL,
    file_type     varchar(10) NOT NULL CHECK (file_type IN ('sql', 'txt')),
    checksum      varchar(64) NOT NULL DEFAULT '',
    norn_version  varchar(50) NOT NULL DEFAULT '',
    status        varchar(50) NOT NULL CHECK (status IN ('pending', 'success', 'failed', 'skipped')),
    error_message text NOT NULL DEFAULT '',
    skip_reason   varchar(100) NOT NULL DEFAULT ''
                  CHECK (skip_reason IN ('', 'unchanged', 'already-run', 'changeset failed')),
    duration_ms   integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS __norn_executions_change ON __norn_executions__ (change_id);
CREATE TABLE IF NOT EXISTS __norn_lock__ (
    id         serial PRIMARY KEY,
    scope      varchar(255) NOT NULL UNIQUE,
    locked_by  varchar(255) NOT NULL,
    locked_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    reason     varchar(255) NOT NULL DEFAULT ''
);
"#;

/// Creates the tables unless they exist. Serialised by a transaction-level
/// advisory lock: two runners starting at once would otherwise race on the
/// catalog (`CREATE TABLE IF NOT EXISTS` is not atomic against itself).
pub async fn ensure(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('__norn_change__'))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(SETUP).execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO __norn_version__ (norn_version, schema_version)
         SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM __norn_version__)",
    )
    .bind(env!("CARGO_PKG_VERSION"))
    .bind(SCHEMA_VERSION)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Whether the tables exist (a dry run creates nothing).
pub async fn exists(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass('__norn_change__') IS NOT NULL")
        .fetch_one(conn)
        .await
}

/// The newest forward row of every change name, with its file checksums.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Applied {
    pub id: i32,
    pub name: String,
    pub checksum: String,
    pub status: String,
    pub executed_at: DateTime<Utc>,
    pub executed_by: String,
    pub error_message: String,
    /// The paths of the files it ran, in the order it ran them: a renamed
    /// file keeps the change's checksum (made of file checksums alone) but
    /// is drift all the same.
    pub files: Vec<String>,
}

pub async fn latest(conn: &mut PgConnection) -> Result<Vec<Applied>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (name) id, name, checksum, status, executed_at, executed_by, error_message,
                coalesce((SELECT array_agg(e.filepath::text ORDER BY e.id)
                          FROM __norn_executions__ e WHERE e.change_id = c.id), '{}') AS files
         FROM __norn_change__ c WHERE direction = 'change'
         ORDER BY name, id DESC",
    )
    .fetch_all(conn)
    .await
}

/// `(filepath, checksum)` of the files a change row ran.
pub async fn file_sums(
    conn: &mut PgConnection,
    change_id: i32,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT filepath, checksum FROM __norn_executions__ WHERE change_id = $1 ORDER BY id",
    )
    .bind(change_id)
    .fetch_all(conn)
    .await
}

pub struct NewChangeRow<'a> {
    pub name: &'a str,
    pub direction: &'a str,
    pub checksum: &'a str,
    pub executed_by: &'a str,
    pub app: &'a str,
    pub status: &'a str,
    pub error_message: &'a str,
    pub duration_ms: i32,
}

pub async fn insert_change(
    conn: &mut PgConnection,
    row: &NewChangeRow<'_>,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO __norn_change__
            (name, direction, checksum, executed_by, app, norn_version, status, error_message, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(row.name)
    .bind(row.direction)
    .bind(row.checksum)
    .bind(row.executed_by)
    .bind(row.app)
    .bind(env!("CARGO_PKG_VERSION"))
    .bind(row.status)
    .bind(row.error_message)
    .bind(row.duration_ms)
    .fetch_one(conn)
    .await
}

pub struct NewExecution<'a> {
    pub filepath: &'a str,
    pub file_type: &'a str,
    pub checksum: &'a str,
    pub status: &'a str,
    pub error_message: &'a str,
    pub skip_reason: &'a str,
    pub duration_ms: i32,
}

pub async fn insert_execution(
    conn: &mut PgConnection,
    change_id: i32,
    e: &NewExecution<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO __norn_executions__
            (change_id, filepath, file_type, checksum, norn_version, status, error_message, skip_reason, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(change_id)
    .bind(e.filepath)
    .bind(e.file_type)
    .bind(e.checksum)
    .bind(env!("CARGO_PKG_VERSION"))
    .bind(e.status)
    .bind(e.error_message)
    .bind(e.skip_reason)
    .bind(e.duration_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a forward row `reverted` (its revert row was just written).
pub async fn mark_reverted(conn: &mut PgConnection, id: i32) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE __norn_change__ SET status = 'reverted' WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Who holds a lock, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Holder {
    pub locked_by: String,
    pub expires_at: DateTime<Utc>,
    pub reason: String,
}

/// The first key of the session advisory lock each scope also takes.
const ADVISORY: i32 = 7317;

/// Whether this session holds the scope's advisory lock.
async fn session_holds(conn: &mut PgConnection, scope: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
             AND pid = pg_backend_pid() AND objsubid = 2 AND classid::bigint = $1
             AND objid::bigint = (hashtext($2)::bigint & 4294967295))",
    )
    .bind(i64::from(ADVISORY))
    .bind(scope)
    .fetch_one(conn)
    .await
}

/// Takes the lock of `scope` for `holder` until `ttl` from now: free,
/// expired (taken over) or already `holder`'s (re-entrant: extended).
/// `Err(Holder)` names who has it otherwise. The row says who holds it and
/// until when; a session advisory lock taken with it keeps excluding others
/// while the holder's connection lives, so a change that outlasts the row's
/// expiry is never run twice. A holder that died loses both at once: its
/// closed connection released the advisory lock, and whoever takes that
/// takes its row over whatever its expiry (the expiry still rules between
/// holders sharing one connection).
pub async fn try_lock(
    conn: &mut PgConnection,
    scope: &str,
    holder: &str,
    ttl: std::time::Duration,
    reason: &str,
) -> Result<Result<(), Holder>, sqlx::Error> {
    let had = session_holds(conn, scope).await?;
    if !had {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(ADVISORY)
            .bind(scope)
            .fetch_one(&mut *conn)
            .await?;
        if !got {
            return Ok(Err(holder_of(conn, scope).await?));
        }
    }
    let taken: Option<String> = sqlx::query_scalar(
        "INSERT INTO __norn_lock__ (scope, locked_by, expires_at, reason)
         VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3), $4)
         ON CONFLICT (scope) DO UPDATE SET
             locked_by = EXCLUDED.locked_by, locked_at = clock_timestamp(),
             expires_at = EXCLUDED.expires_at, reason = EXCLUDED.reason
         WHERE __norn_lock__.locked_by = EXCLUDED.locked_by
            OR __norn_lock__.expires_at < clock_timestamp()
            OR $5
         RETURNING locked_by",
    )
    .bind(scope)
    .bind(holder)
    .bind(ttl.as_secs_f64())
    .bind(reason)
    // Every live holder keeps the advisory lock while it holds the row, so
    // having just taken it means the row's holder is gone (its connection
    // closed: a killed process, or a step deadline that dropped the runner
    // mid-change): its row is taken over at once, not when it expires.
    .bind(!had)
    .fetch_optional(&mut *conn)
    .await?;
    if taken.is_some() {
        return Ok(Ok(()));
    }
    if !had {
        release_advisory(conn, scope).await?;
    }
    Ok(Err(holder_of(conn, scope).await?))
}

async fn release_advisory(conn: &mut PgConnection, scope: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
        .bind(ADVISORY)
        .bind(scope)
        .execute(conn)
        .await?;
    Ok(())
}

/// Who holds the lock of `scope` now (`None`: free, or no tables yet).
pub async fn held(conn: &mut PgConnection, scope: &str) -> Result<Option<Holder>, sqlx::Error> {
    // The tables are made together: no change table, no lock table.
    if !exists(conn).await? {
        return Ok(None);
    }
    lock_row(conn, scope).await
}

async fn lock_row(conn: &mut PgConnection, scope: &str) -> Result<Option<Holder>, sqlx::Error> {
    sqlx::query_as("SELECT locked_by, expires_at, reason FROM __norn_lock__ WHERE scope = $1")
        .bind(scope)
        .fetch_optional(conn)
        .await
}

/// Who the row names.
async fn holder_of(conn: &mut PgConnection, scope: &str) -> Result<Holder, sqlx::Error> {
    // `None`: released between the two statements.
    Ok(lock_row(conn, scope).await?.unwrap_or_else(|| Holder {
        locked_by: "a runner that has just released it".into(),
        expires_at: Utc::now(),
        reason: String::new(),
    }))
}

/// Gives the lock back, if `holder` still has it, with this session's
/// advisory lock.
pub async fn unlock(conn: &mut PgConnection, scope: &str, holder: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM __norn_lock__ WHERE scope = $1 AND locked_by = $2")
        .bind(scope)
        .bind(holder)
        .execute(&mut *conn)
        .await?;
    if session_holds(conn, scope).await? {
        release_advisory(conn, scope).await?;
    }
    Ok(())
}
