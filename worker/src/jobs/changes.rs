//! The change-run job: a change-runner operation requested through the API
//! (`change_runs` row), on a fresh checkout of the app's deployed commit, as
//! the app's own role. Operations that write the app database (run, revert,
//! rewind) hold the app lease, so they never interleave with a deploy; a
//! status read or a dry run does not wait for one.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{BoxDynError, Data};
use norn_shared::changes::{self, ChangeRun, ChangeStatus, Options, Outcome, State, Wait};
use norn_shared::db::apps;
use norn_shared::db::change_runs::{self, ChangeAction, ChangeRunRecord};
use norn_shared::db::deployments;
use norn_shared::db::lease;
use norn_shared::domain::GitRef;
use norn_shared::infraspec::Migrations;
use norn_shared::jobs::ChangesJob;
use tracing::Instrument;

use super::lease_wait::{self, Turn};
use crate::WorkerError;
use crate::adapters::migrator::{ChangeSession, MigrateError};
use crate::state::WorkerState;
use crate::steps::{clone, migrate};

pub async fn run(job: ChangesJob, state: Data<Arc<WorkerState>>) -> Result<(), BoxDynError> {
    let state: Arc<WorkerState> = (*state).clone();
    let _busy = state.busy();
    let span = tracing::info_span!("changes", app = %job.app, job.id = %job.run_id);
    match execute(&job, &state).instrument(span.clone()).await {
        Ok(()) | Err(WorkerError::Fenced) => Ok(()),
        Err(e) => {
            span.in_scope(|| tracing::error!(error = %e, "change run failed; it will be retried"));
            Err(Box::new(e))
        }
    }
}

async fn load(state: &WorkerState, id: &str) -> Result<Option<ChangeRunRecord>, WorkerError> {
    let mut conn = state.pool.acquire().await?;
    Ok(change_runs::get(&mut conn, id).await?)
}

async fn execute(job: &ChangesJob, state: &WorkerState) -> Result<(), WorkerError> {
    let Some(r) = load(state, &job.run_id).await? else {
        return Ok(());
    };
    if r.status.is_terminal() {
        return Ok(());
    }
    if !r.action.writes() {
        return perform(state, r, None).await;
    }
    let turn = || async {
        let r = load(state, &job.run_id).await?;
        let live = r.is_some_and(|r| !r.status.is_terminal());
        Ok(if live { Turn::Go } else { Turn::Gone })
    };
    // Read again under the lease: an earlier attempt may have chosen a
    // rewind's targets while this one waited.
    let work = |token| async move {
        match load(state, &r.id).await? {
            Some(r) if !r.status.is_terminal() => perform(state, r, Some(token)).await,
            _ => Ok(()),
        }
    };
    lease_wait::holding(state, &job.app, "changes", &job.run_id, turn, work)
        .await
        .map(|_| ())
}

/// A transaction for this run's own rows: fenced when it holds the app lease.
async fn begin(
    state: &WorkerState,
    app: &str,
    token: Option<i64>,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, WorkerError> {
    Ok(match token {
        Some(token) => lease::fenced(&state.pool, app, token)
            .await?
            .ok_or(WorkerError::Fenced)?,
        None => state.pool.begin().await?,
    })
}

async fn perform(
    state: &WorkerState,
    r: ChangeRunRecord,
    token: Option<i64>,
) -> Result<(), WorkerError> {
    let mut tx = begin(state, &r.app, token).await?;
    let deployed = deployments::current(&mut tx, &r.app)
        .await?
        .and_then(|d| d.commit_sha);
    let Some((attempts, commit_sha)) =
        change_runs::start(&mut tx, &r.id, deployed.as_deref()).await?
    else {
        // Finished meanwhile (a late duplicate delivery).
        return Ok(());
    };
    tx.commit().await?;
    let r = ChangeRunRecord { commit_sha, ..r };
    let workdir = state.config.work_dir.join(format!("changes-{}", r.id));
    let ended = operate(state, &r, attempts, &workdir).await;
    crate::steps::cleanup::remove_workdir(&workdir).await;
    let (statuses, runs, error) = match ended {
        Ok(done) => (done.statuses, done.runs, done.error),
        Err(e) => (None, Vec::new(), Some(e)),
    };
    let mut tx = begin(state, &r.app, token).await?;
    change_runs::finish(&mut tx, &r.id, statuses.as_deref(), &runs, error.as_deref()).await?;
    tx.commit().await?;
    match error {
        None => tracing::info!(action = ?r.action, "change run succeeded"),
        Some(e) => tracing::warn!(action = ?r.action, error = %e, "change run failed"),
    }
    Ok(())
}

/// What a run did: `error` set when it failed (its runs and the statuses
/// afterwards are still reported).
struct Done {
    statuses: Option<Vec<ChangeStatus>>,
    runs: Vec<ChangeRun>,
    error: Option<String>,
}

/// Checks out the deployed commit, reads the folder and runs the action.
/// `Err` is a failure before the app database was touched.
async fn operate(
    state: &WorkerState,
    r: &ChangeRunRecord,
    attempts: i32,
    workdir: &std::path::Path,
) -> Result<Done, String> {
    let app = {
        let mut conn = state.pool.acquire().await.map_err(|e| e.to_string())?;
        apps::get(&mut conn, &r.app)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("app {} is no longer registered", r.app))?
    };
    let Some(Migrations::Dir(dir)) = app.spec.migrations.clone() else {
        return Err(format!("app {} declares no migrations.dir", r.app));
    };
    let Some(pg) = app.spec.services.postgres.clone() else {
        return Err("migrations need services.postgres.database".into());
    };
    let sha = r.commit_sha.as_deref().ok_or("the run names no commit")?;
    let at = GitRef::parse(sha).map_err(|e| e.to_string())?;
    clone::checkout(state, &app, at, workdir).await?;
    let loaded = migrate::load_folder(workdir, &dir).await?;
    let mut session = migrate::connect(state, &r.app, &pg.database).await?;
    let opts = Options {
        // Unique per attempt: a resumed run is a new holder.
        holder: format!("{} via api (run {} #{attempts})", r.requested_by, r.id),
        app: r.app.clone(),
        scope: pg.database.clone(),
        lock_ttl: changes::LOCK_TTL,
        // A developer's `norn changes run` may hold it for a while.
        wait: Some(Wait {
            timeout: LOCK_WAIT,
            poll: Duration::from_secs(1),
        }),
    };
    let (runs, stopped) = act(state, r, attempts, session.as_mut(), &loaded, &opts).await;
    let statuses = session.status(&loaded).await.ok();
    let error = stopped.or_else(|| changes::first_failure(&runs));
    Ok(Done {
        statuses,
        runs,
        error,
    })
}

async fn act(
    state: &WorkerState,
    r: &ChangeRunRecord,
    attempts: i32,
    session: &mut dyn ChangeSession,
    loaded: &[changes::Change],
    opts: &Options,
) -> (Vec<ChangeRun>, Option<String>) {
    let split = |done: Result<Vec<ChangeRun>, MigrateError>| match done {
        Ok(runs) => (runs, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    match r.action {
        ChangeAction::Status | ChangeAction::Deploy => (Vec::new(), None),
        ChangeAction::DryRun => split(session.dry_run(loaded).await),
        ChangeAction::Run => split(session.apply(loaded, opts, r.force).await),
        ChangeAction::Revert | ChangeAction::Rewind => {
            // What was reverted before an error stays in the report.
            let mut runs = Vec::new();
            let stopped = revert_targets(state, r, attempts, session, loaded, opts, &mut runs)
                .await
                .err();
            (runs, stopped)
        }
    }
}

/// Reverts the run's targets in order, newest first, into `runs`, stopping
/// at the first that fails.
async fn revert_targets(
    state: &WorkerState,
    r: &ChangeRunRecord,
    attempts: i32,
    session: &mut dyn ChangeSession,
    loaded: &[changes::Change],
    opts: &Options,
    runs: &mut Vec<ChangeRun>,
) -> Result<(), String> {
    for name in targets(state, r, session).await? {
        // A resumed run skips what its earlier attempt reverted.
        if attempts > 1 && state_of(session, loaded, &name).await? == Some(State::Reverted) {
            continue;
        }
        let run = session
            .revert(loaded, &name, opts)
            .await
            .map_err(|e| e.to_string())?;
        let failed = run.outcome == Outcome::Failed;
        runs.push(run);
        if failed {
            break;
        }
    }
    Ok(())
}

/// The changes a revert or rewind reverts. A rewind chooses its changes
/// once and records them, so a resumed rewind never reverts more.
async fn targets(
    state: &WorkerState,
    r: &ChangeRunRecord,
    session: &mut dyn ChangeSession,
) -> Result<Vec<String>, String> {
    if let Some(targets) = &r.targets {
        return Ok(targets.0.clone());
    }
    let n = usize::try_from(r.count.unwrap_or(1)).unwrap_or(1);
    let names = session.newest_applied(n).await.map_err(|e| e.to_string())?;
    let mut pool_conn = state.pool.acquire().await.map_err(|e| e.to_string())?;
    // The first choice recorded wins: a concurrent attempt reverts the same.
    change_runs::set_targets(&mut pool_conn, &r.id, &names)
        .await
        .map_err(|e| e.to_string())
}

async fn state_of(
    session: &mut dyn ChangeSession,
    loaded: &[changes::Change],
    name: &str,
) -> Result<Option<State>, String> {
    Ok(session
        .status(loaded)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.state))
}

/// How long a run waits for another runner's change lock.
const LOCK_WAIT: Duration = Duration::from_secs(120);
