//! The built-in change runner: applies an app's `migrations.dir` changes to
//! its database, each in one transaction, tracked in the database itself
//! (`db::changes`) with checksums, so a change runs once, an edited one is
//! drift, and any can be reverted. One runner at a time per database: a
//! lock with expiry, re-entrant for its holder.

pub mod disk;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};

use crate::db::changes::{self as track, Applied, Holder, NewChangeRow, NewExecution};
pub use disk::{Change, ChangeFile, Direction, DiskError, FileKind};

/// How long a runner's lock lasts unless renewed (each change renews it).
pub const LOCK_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("the changes of {scope} are locked by {} until {} ({})", .holder.locked_by, .holder.expires_at, .holder.reason)]
    Locked { scope: String, holder: Holder },
    #[error("change {change} was edited after it ran (drift in {}); revert it, or run again with force", .files.join(", "))]
    Drift { change: String, files: Vec<String> },
    #[error("change {0} has not been applied, so it cannot be reverted")]
    NotApplied(String),
    #[error("change {0} has no revert/ files")]
    NoRevert(String),
    #[error("change {0} is not in the migrations folder")]
    Unknown(String),
}

/// Who runs, for which app, and how long to wait for another runner.
#[derive(Debug, Clone)]
pub struct Options {
    /// Recorded as `executed_by` and as the lock's holder: unique per runner
    /// (a deploy id; the CLI adds its process id), since the lock is
    /// re-entrant for its holder.
    pub holder: String,
    pub app: String,
    /// The lock's scope: one per database.
    pub scope: String,
    pub lock_ttl: Duration,
    /// Wait for a held lock this long, polling; `None` fails at once.
    pub wait: Option<Wait>,
}

#[derive(Debug, Clone, Copy)]
pub struct Wait {
    pub timeout: Duration,
    pub poll: Duration,
}

/// A change as disk and database see it together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Applied,
    Reverted,
    Failed,
    /// Applied, and its files changed since.
    Drifted,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeStatus {
    pub name: String,
    pub state: State,
    /// False for a change the database ran that is no longer on disk.
    pub on_disk: bool,
    pub applied_at: Option<chrono::DateTime<chrono::Utc>>,
    pub applied_by: Option<String>,
    pub error: Option<String>,
    /// Files added, removed or edited since it ran (drifted only).
    pub drifted_files: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    Success,
    Failed,
    Skipped,
    /// Dry run: it would run.
    Pending,
}

impl FileStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Pending => "pending",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileRun {
    pub path: String,
    pub kind: FileKind,
    pub status: FileStatus,
    /// `changeset failed` for the files after a failed one.
    pub skip_reason: Option<String>,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// Dry run only: the SQL that would run.
    pub sql: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Ran, and committed.
    Applied,
    Reverted,
    /// Applied before with the same checksum: not run (`already-run`).
    Skipped,
    /// A file failed: with a transaction nothing of the change stays.
    Failed,
    /// Dry run: would run.
    WouldRun,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRun {
    pub name: String,
    pub direction: Direction,
    pub outcome: Outcome,
    /// False when the change opted out (`-- norn:no-transaction`).
    pub transactional: bool,
    pub files: Vec<FileRun>,
    pub duration_ms: u64,
    pub error: Option<String>,
}

impl ChangeRun {
    /// One line per change and per file, as the deploy's step log shows them.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "{} {} ({:?}, {} ms){}",
            self.direction.as_str(),
            self.name,
            self.outcome,
            self.duration_ms,
            self.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )];
        for f in &self.files {
            lines.push(format!(
                "  {} {}{} ({} ms){}",
                f.status.as_str(),
                f.path,
                f.skip_reason
                    .as_deref()
                    .map(|r| format!(" [{r}]"))
                    .unwrap_or_default(),
                f.duration_ms,
                f.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
        lines
    }
}

/// The error of the first failed change of `runs`, as a step or a run reports it.
pub fn first_failure(runs: &[ChangeRun]) -> Option<String> {
    runs.iter().find(|r| r.outcome == Outcome::Failed).map(|f| {
        f.error
            .clone()
            .unwrap_or_else(|| format!("change {} failed", f.name))
    })
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u32::MAX)) as u64
}

async fn lock(conn: &mut PgConnection, opts: &Options, reason: &str) -> Result<(), RunError> {
    let started = Instant::now();
    loop {
        match track::try_lock(conn, &opts.scope, &opts.holder, opts.lock_ttl, reason).await? {
            Ok(()) => return Ok(()),
            Err(holder) => match opts.wait {
                Some(w) if started.elapsed() < w.timeout => tokio::time::sleep(w.poll).await,
                _ => {
                    return Err(RunError::Locked {
                        scope: opts.scope.clone(),
                        holder,
                    });
                }
            },
        }
    }
}

/// Runs `work` under the lock, and gives the lock back whatever happened
/// (`work` is one call, so its `?` cannot skip the release).
macro_rules! locked {
    ($conn:expr, $opts:expr, $reason:expr, $work:expr) => {{
        track::ensure($conn).await?;
        lock($conn, $opts, $reason).await?;
        let result = $work;
        let released = track::unlock($conn, &$opts.scope, &$opts.holder).await;
        let result = result?;
        released?;
        Ok(result)
    }};
}

/// The files that differ between disk and what ran.
fn drift(change: &Change, ran: &[(String, String)]) -> Vec<String> {
    let disk: BTreeMap<&str, &str> = change
        .change
        .iter()
        .map(|f| (f.path.as_str(), f.checksum.as_str()))
        .collect();
    let db: BTreeMap<&str, &str> = ran.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    let mut files: Vec<String> = disk
        .iter()
        .filter(|(p, c)| db.get(*p) != Some(*c))
        .map(|(p, _)| p.to_string())
        .chain(
            db.keys()
                .filter(|p| !disk.contains_key(*p))
                .map(|p| format!("{p} (removed)")),
        )
        .collect();
    files.sort();
    files
}

/// Every change on disk or in the database, merged.
pub async fn status(
    conn: &mut PgConnection,
    changes: &[Change],
) -> Result<Vec<ChangeStatus>, RunError> {
    let rows = if track::exists(conn).await? {
        track::latest(conn).await?
    } else {
        Vec::new()
    };
    let mut by_name: BTreeMap<String, Applied> =
        rows.into_iter().map(|r| (r.name.clone(), r)).collect();
    let mut out = Vec::new();
    for change in changes {
        let row = by_name.remove(&change.name);
        out.push(merge(conn, change, row).await?);
    }
    for (name, row) in by_name {
        out.push(ChangeStatus {
            name,
            state: state_of(&row.status),
            on_disk: false,
            applied_at: Some(row.executed_at),
            applied_by: Some(row.executed_by),
            error: (!row.error_message.is_empty()).then_some(row.error_message),
            drifted_files: Vec::new(),
        });
    }
    Ok(out)
}

fn state_of(status: &str) -> State {
    match status {
        "success" => State::Applied,
        "reverted" => State::Reverted,
        "failed" => State::Failed,
        _ => State::Pending,
    }
}

async fn merge(
    conn: &mut PgConnection,
    change: &Change,
    row: Option<Applied>,
) -> Result<ChangeStatus, RunError> {
    let Some(row) = row else {
        return Ok(ChangeStatus {
            name: change.name.clone(),
            state: State::Pending,
            on_disk: true,
            applied_at: None,
            applied_by: None,
            error: None,
            drifted_files: Vec::new(),
        });
    };
    let mut state = state_of(&row.status);
    let mut drifted_files = Vec::new();
    let renamed = !change
        .change
        .iter()
        .map(|f| f.path.as_str())
        .eq(row.files.iter().map(String::as_str));
    if state == State::Applied && (renamed || row.checksum != change.checksum(Direction::Change)) {
        state = State::Drifted;
        drifted_files = drift(change, &track::file_sums(conn, row.id).await?);
    }
    Ok(ChangeStatus {
        name: change.name.clone(),
        state,
        on_disk: true,
        applied_at: Some(row.executed_at),
        applied_by: Some(row.executed_by),
        error: (!row.error_message.is_empty()).then_some(row.error_message),
        drifted_files,
    })
}

/// Applies every change not applied yet, in order, stopping at the first
/// that fails. Drift refuses the whole run before anything runs, unless
/// `force` (a drifted change then runs again).
pub async fn apply(
    conn: &mut PgConnection,
    changes: &[Change],
    opts: &Options,
    force: bool,
) -> Result<Vec<ChangeRun>, RunError> {
    locked!(
        conn,
        opts,
        "apply",
        apply_locked(conn, changes, opts, force).await
    )
}

async fn apply_locked(
    conn: &mut PgConnection,
    changes: &[Change],
    opts: &Options,
    force: bool,
) -> Result<Vec<ChangeRun>, RunError> {
    let states = status(conn, changes).await?;
    if !force && let Some(d) = states.iter().find(|s| s.state == State::Drifted) {
        return Err(RunError::Drift {
            change: d.name.clone(),
            files: d.drifted_files.clone(),
        });
    }
    let mut runs = Vec::new();
    for (change, state) in changes.iter().zip(&states) {
        if state.state == State::Applied {
            runs.push(skipped(change));
            continue;
        }
        // Long runs keep the lock theirs.
        lock(conn, opts, "apply").await?;
        let run = execute(conn, change, Direction::Change, opts, None).await?;
        let failed = run.outcome == Outcome::Failed;
        runs.push(run);
        if failed {
            break;
        }
    }
    Ok(runs)
}

fn skipped(change: &Change) -> ChangeRun {
    ChangeRun {
        name: change.name.clone(),
        direction: Direction::Change,
        outcome: Outcome::Skipped,
        transactional: !change.no_transaction(Direction::Change),
        files: change
            .change
            .iter()
            .map(|f| FileRun {
                path: f.path.clone(),
                kind: f.kind,
                status: FileStatus::Skipped,
                skip_reason: Some("already-run".into()),
                duration_ms: 0,
                error: None,
                sql: None,
            })
            .collect(),
        duration_ms: 0,
        error: None,
    }
}

/// What `apply` would run, with the SQL, writing nothing (not even the
/// tracking tables).
pub async fn dry_run(
    conn: &mut PgConnection,
    changes: &[Change],
) -> Result<Vec<ChangeRun>, RunError> {
    let states = status(conn, changes).await?;
    Ok(changes
        .iter()
        .zip(&states)
        .filter(|(_, s)| s.state != State::Applied)
        .map(|(change, _)| ChangeRun {
            name: change.name.clone(),
            direction: Direction::Change,
            outcome: Outcome::WouldRun,
            transactional: !change.no_transaction(Direction::Change),
            files: change
                .change
                .iter()
                .map(|f| FileRun {
                    path: f.path.clone(),
                    kind: f.kind,
                    status: FileStatus::Pending,
                    skip_reason: None,
                    duration_ms: 0,
                    error: None,
                    sql: Some(f.sql.clone()),
                })
                .collect(),
            duration_ms: 0,
            error: None,
        })
        .collect())
}

/// Reverts the named change: runs its `revert/` files, records a `revert`
/// row and marks the forward one `reverted`.
pub async fn revert(
    conn: &mut PgConnection,
    changes: &[Change],
    name: &str,
    opts: &Options,
) -> Result<ChangeRun, RunError> {
    locked!(
        conn,
        opts,
        "revert",
        revert_locked(conn, changes, name, opts).await
    )
}

async fn revert_locked(
    conn: &mut PgConnection,
    changes: &[Change],
    name: &str,
    opts: &Options,
) -> Result<ChangeRun, RunError> {
    let change = changes
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| RunError::Unknown(name.to_owned()))?;
    let forward = track::latest(conn)
        .await?
        .into_iter()
        .find(|r| r.name == name && r.status == "success")
        .ok_or_else(|| RunError::NotApplied(name.to_owned()))?;
    if change.revert.is_empty() {
        return Err(RunError::NoRevert(name.to_owned()));
    }
    execute(conn, change, Direction::Revert, opts, Some(forward.id)).await
}

/// Reverts the newest `n` applied changes, newest first, stopping at the
/// first that fails.
pub async fn rewind(
    conn: &mut PgConnection,
    changes: &[Change],
    n: usize,
    opts: &Options,
) -> Result<Vec<ChangeRun>, RunError> {
    locked!(
        conn,
        opts,
        "rewind",
        rewind_locked(conn, changes, n, opts).await
    )
}

async fn rewind_locked(
    conn: &mut PgConnection,
    changes: &[Change],
    n: usize,
    opts: &Options,
) -> Result<Vec<ChangeRun>, RunError> {
    let mut runs = Vec::new();
    for name in newest_applied(conn, n).await? {
        lock(conn, opts, "rewind").await?;
        let run = revert_locked(conn, changes, &name, opts).await?;
        let failed = run.outcome == Outcome::Failed;
        runs.push(run);
        if failed {
            break;
        }
    }
    Ok(runs)
}

/// The names of the newest `n` applied changes, newest first (what `rewind
/// n` reverts).
pub async fn newest_applied(conn: &mut PgConnection, n: usize) -> Result<Vec<String>, RunError> {
    if !track::exists(conn).await? {
        return Ok(Vec::new());
    }
    let mut applied: Vec<Applied> = track::latest(conn)
        .await?
        .into_iter()
        .filter(|r| r.status == "success")
        .collect();
    // Row ids grow with every run: the newest applied first, whatever the clock did.
    applied.sort_by_key(|r| std::cmp::Reverse(r.id));
    Ok(applied.into_iter().take(n).map(|r| r.name).collect())
}

/// Runs `files` in order on `conn`; after a failure the rest are skipped
/// (`changeset failed`). The error names the failed file.
async fn run_files(
    conn: &mut PgConnection,
    files: &[ChangeFile],
) -> (Vec<FileRun>, Option<String>) {
    let mut runs: Vec<FileRun> = Vec::with_capacity(files.len());
    let mut error = None;
    for file in files {
        if error.is_some() {
            runs.push(FileRun {
                path: file.path.clone(),
                kind: file.kind,
                status: FileStatus::Skipped,
                skip_reason: Some("changeset failed".into()),
                duration_ms: 0,
                error: None,
                sql: None,
            });
            continue;
        }
        let t0 = Instant::now();
        let ran = sqlx::raw_sql(sqlx::AssertSqlSafe(file.sql.clone()))
            .execute(&mut *conn)
            .await;
        let (status, file_error) = match ran {
            Ok(_) => (FileStatus::Success, None),
            Err(e) => {
                let message = match &e {
                    sqlx::Error::Database(db) => db.message().to_owned(),
                    other => other.to_string(),
                };
                error = Some(format!("{}: {message}", file.path));
                (FileStatus::Failed, Some(message))
            }
        };
        runs.push(FileRun {
            path: file.path.clone(),
            kind: file.kind,
            status,
            skip_reason: None,
            duration_ms: ms(t0.elapsed()),
            error: file_error,
            sql: None,
        });
    }
    (runs, error)
}

/// Runs one direction of a change and records it. With a transaction the
/// change's files and its success rows commit together; a failure rolls
/// all of it back and is recorded after.
async fn execute(
    conn: &mut PgConnection,
    change: &Change,
    direction: Direction,
    opts: &Options,
    forward: Option<i32>,
) -> Result<ChangeRun, RunError> {
    let files = change.files(direction);
    let transactional = !change.no_transaction(direction);
    let started = Instant::now();
    let finish = |files: Vec<FileRun>, error: Option<String>| {
        let outcome = match (&error, direction) {
            (Some(_), _) => Outcome::Failed,
            (None, Direction::Change) => Outcome::Applied,
            (None, Direction::Revert) => Outcome::Reverted,
        };
        let error = error.map(|e| {
            if transactional {
                format!("{e}; the change was rolled back: nothing of it stays applied")
            } else {
                format!(
                    "{e}; it ran without a transaction (-- norn:no-transaction): the files before it stay applied"
                )
            }
        });
        ChangeRun {
            name: change.name.clone(),
            direction,
            outcome,
            transactional,
            files,
            duration_ms: ms(started.elapsed()),
            error,
        }
    };
    let run = if transactional {
        let mut tx = conn.begin().await?;
        let (files, error) = run_files(&mut tx, files).await;
        let run = finish(files, error);
        if run.outcome != Outcome::Failed {
            reset_session(&mut tx).await?;
            record(&mut tx, change, &run, opts, forward).await?;
            tx.commit().await?;
            return Ok(run);
        }
        tx.rollback().await?;
        run
    } else {
        let (files, error) = run_files(conn, files).await;
        reset_session(conn).await?;
        finish(files, error)
    };
    let mut tx = conn.begin().await?;
    record(&mut tx, change, &run, opts, forward).await?;
    tx.commit().await?;
    Ok(run)
}

/// A change may `SET search_path` or `SET ROLE` (and a rolled-back one
/// already lost its settings): the session is put back before anything else
/// runs on it, the tracking rows included, which would otherwise land in the
/// change's schema, or fail.
async fn reset_session(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("RESET ALL; RESET ROLE; RESET SESSION AUTHORIZATION")
        .execute(conn)
        .await?;
    Ok(())
}

async fn record(
    conn: &mut PgConnection,
    change: &Change,
    run: &ChangeRun,
    opts: &Options,
    forward: Option<i32>,
) -> Result<(), sqlx::Error> {
    let status = if run.outcome == Outcome::Failed {
        "failed"
    } else {
        "success"
    };
    let id = track::insert_change(
        conn,
        &NewChangeRow {
            name: &change.name,
            direction: run.direction.as_str(),
            checksum: &change.checksum(run.direction),
            executed_by: &opts.holder,
            app: &opts.app,
            status,
            error_message: run.error.as_deref().unwrap_or(""),
            duration_ms: run.duration_ms.min(i32::MAX as u64) as i32,
        },
    )
    .await?;
    for (file, ran) in change.files(run.direction).iter().zip(&run.files) {
        track::insert_execution(
            conn,
            id,
            &NewExecution {
                filepath: &file.path,
                file_type: file.kind.as_str(),
                checksum: &file.checksum,
                status: ran.status.as_str(),
                error_message: ran.error.as_deref().unwrap_or(""),
                skip_reason: ran.skip_reason.as_deref().unwrap_or(""),
                duration_ms: ran.duration_ms.min(i32::MAX as u64) as i32,
            },
        )
        .await?;
    }
    if let (Some(forward), false) = (forward, run.outcome == Outcome::Failed) {
        track::mark_reverted(conn, forward).await?;
    }
    Ok(())
}
