use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use norn_shared::changes;
use norn_shared::db::change_runs;
use norn_shared::domain::{GitRef, Step};
use norn_shared::infraspec::Migrations;

use crate::adapters::migrator::ChangeSession;
use crate::adapters::{OneOff, Output};
use crate::pipeline::{DeployCtx, StepFailure, StepOutput};
use crate::state::WorkerState;

pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let Some(migrations) = ctx.app.spec.migrations.clone() else {
        return Ok(StepOutput::skipped("no migrations declared"));
    };
    // The infraspec guarantees a database whenever migrations are declared.
    let Some(pg) = ctx.app.spec.services.postgres.clone() else {
        return Err(StepFailure::new(
            "migrations need services.postgres.database",
        ));
    };
    let command = match migrations {
        Migrations::Dir(dir) => return run_changes(ctx, &pg.database, &dir).await,
        Migrations::Command(command) => command,
    };
    // The forge step made the database and the app's role; the migration
    // runs as that role, like the app.
    let env = crate::services::app_env(ctx.state, &ctx.app.id, &ctx.app.spec)
        .await
        .map_err(|e| StepFailure::new(e.to_string()))?;
    let job = OneOff {
        name: ctx.one_off_name("migrate"),
        image: ctx.image()?.to_owned(),
        command: command.clone(),
        env,
        labels: BTreeMap::from([
            ("norn.app".into(), ctx.app.id.clone()),
            ("norn.deployment".into(), ctx.deployment_id.clone()),
            ("norn.job".into(), "migrate".into()),
        ]),
        limits: None,
        timeout: ctx.deadline(Step::Migrate),
    };
    let runtime = ctx.state.runtime.clone();
    let exit_code = runtime
        .run_once(&job, &mut ctx.log)
        .await
        .map_err(|e| StepFailure::new(format!("running {command:?}: {e}")))?;
    if exit_code != 0 {
        return Err(StepFailure::new(format!(
            "{command:?} exited with {exit_code}"
        )));
    }
    Ok(StepOutput::done(""))
}

/// `migrations.dir`: Norn's change runner applies the folder's pending
/// changes as the app's own role, under the database's change lock (held
/// for the whole step), and logs each change and file. What it did is also
/// recorded in `change_runs`, which `GET /api/apps/{id}/changes` reads.
async fn run_changes(
    ctx: &mut DeployCtx<'_>,
    database: &str,
    dir: &str,
) -> Result<StepOutput, StepFailure> {
    // Until a change runs, a failure leaves the database as the snapshot
    // found it: restoring would only throw away what the app wrote since.
    ctx.migration_undone = true;
    if !ctx.workdir.exists()
        && let Some(sha) = ctx.sha.clone()
    {
        // Resumed on another worker: fetch the commit the clone recorded.
        let at = GitRef::parse(&sha).map_err(|e| StepFailure::new(e.to_string()))?;
        super::clone::fetch(ctx, at).await?;
    }
    let loaded = load_folder(&ctx.workdir, dir)
        .await
        .map_err(StepFailure::new)?;
    let mut session = connect(ctx.state, &ctx.app.id, database)
        .await
        .map_err(StepFailure::new)?;
    let opts = changes::Options {
        // The attempt's lease token too: a fenced attempt still running is
        // another holder, not the same one.
        holder: format!("deploy {} #{}", ctx.deployment_id, ctx.token),
        app: ctx.app.id.clone(),
        scope: database.to_owned(),
        lock_ttl: changes::LOCK_TTL,
        // A developer's `norn changes run` may hold it for a while.
        wait: Some(changes::Wait {
            timeout: LOCK_WAIT,
            poll: Duration::from_secs(1),
        }),
    };
    if let Ok(Some(other)) = session.held(database).await {
        // Said before the wait, so a deploy that seems stuck tells why.
        ctx.log
            .write(&format!(
                "the change lock of {database} is held by {} ({}) until {}; waiting up to {} s\n",
                other.locked_by,
                other.reason,
                other.expires_at.to_rfc3339(),
                LOCK_WAIT.as_secs()
            ))
            .await;
    }
    let applied = session.apply(&loaded, &opts, false).await;
    let runs = applied.as_deref().unwrap_or_default();
    let log: Vec<String> = runs.iter().flat_map(|r| r.lines()).collect();
    if !log.is_empty() {
        ctx.log.write(&format!("{}\n", log.join("\n"))).await;
    }
    let failure = match &applied {
        Err(e) => Some(e.to_string()),
        Ok(runs) => changes::first_failure(runs),
    };
    let after = session.status(&loaded).await.ok();
    record(
        ctx,
        &opts.holder,
        after.as_deref(),
        runs,
        failure.as_deref(),
    )
    .await;
    if let Some(error) = failure {
        let this = format!("deploy {} #", ctx.deployment_id);
        ctx.migration_undone = nothing_stayed(&this, after.as_deref(), runs);
        return Err(StepFailure::new(error));
    }
    let applied = runs
        .iter()
        .filter(|r| r.outcome == changes::Outcome::Applied)
        .count();
    Ok(StepOutput::done(format!(
        "{applied} change(s) applied, {} already applied",
        runs.len() - applied
    )))
}

/// Whether a failed deploy left the database as the snapshot found it: no
/// change stays applied by this deployment (`holder`, any attempt: a failed
/// change's transaction undid it, or the run stopped before any ran, on
/// drift or a held lock), and no change that ran without a transaction
/// failed half way. Unknown counts as changed.
fn nothing_stayed(
    holder: &str,
    after: Option<&[changes::ChangeStatus]>,
    runs: &[changes::ChangeRun],
) -> bool {
    let half_done = runs
        .iter()
        .any(|r| r.outcome == changes::Outcome::Failed && !r.transactional);
    let Some(after) = after else {
        return false;
    };
    !half_done
        && !after.iter().any(|s| {
            matches!(s.state, changes::State::Applied | changes::State::Drifted)
                && s.applied_by
                    .as_deref()
                    .is_some_and(|by| by.starts_with(holder))
        })
}

/// Records the step's run in `change_runs` with every change's status
/// afterwards. Only a record: failing to write it is logged, not fatal.
async fn record(
    ctx: &DeployCtx<'_>,
    holder: &str,
    statuses: Option<&[changes::ChangeStatus]>,
    runs: &[changes::ChangeRun],
    error: Option<&str>,
) {
    let run = change_runs::DeployRun {
        app: &ctx.app.id,
        deployment_id: &ctx.deployment_id,
        commit_sha: ctx.sha.as_deref(),
        holder,
        changes: statuses,
        runs,
        error,
    };
    if let Err(e) = change_runs::insert_deploy(&ctx.state.pool, &run).await {
        tracing::warn!(error = %e, "recording the change run failed");
    }
}

/// Reads and checks `dir` of the checkout in `workdir`. The folder may be a
/// symlink in the repository: it must still resolve inside the checkout, or
/// the app's repo could feed host files to SQL.
pub async fn load_folder(workdir: &Path, dir: &str) -> Result<Vec<changes::Change>, String> {
    let (workdir, folder) = (workdir.to_owned(), workdir.join(dir));
    let inside = tokio::task::spawn_blocking(move || {
        let root = workdir.canonicalize()?;
        let real = folder.canonicalize()?;
        Ok::<_, std::io::Error>(real.starts_with(&root).then_some(real))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("migrations.dir {dir}: {e}"))?;
    let Some(folder) = inside else {
        return Err(format!(
            "migrations.dir {dir} resolves outside the app's source"
        ));
    };
    tokio::task::spawn_blocking(move || changes::disk::load(&folder))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("migrations.dir: {e}"))
}

/// A change session on the app's database as the app's own role.
pub async fn connect(
    state: &WorkerState,
    app: &str,
    database: &str,
) -> Result<Box<dyn ChangeSession>, String> {
    let login = crate::services::require_pg_login(state, app, database)
        .await
        .map_err(|e| e.to_string())?;
    state
        .migrator
        .open(database, &login)
        .await
        .map_err(|e| e.to_string())
}

/// How long a deploy waits for another runner's change lock.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// After a failed migration: restores the dump the snapshot step took before
/// it (`deployPolicy.restoreOnFailedMigration`, default on). Returns what
/// happened, for the step log and the error.
pub async fn restore_after_failure(ctx: &DeployCtx<'_>) -> String {
    let Some(pg) = &ctx.app.spec.services.postgres else {
        return String::new();
    };
    if ctx.migration_undone {
        return "nothing restored: no change of this run stayed applied (a failed change's transaction undid it, or none ran)".into();
    }
    if !ctx.app.spec.deploy_policy.restore_on_failed_migration {
        return "deployPolicy.restoreOnFailedMigration is off: the database was left as the migration left it".into();
    }
    let Some(file) = &ctx.snapshot else {
        return "no pre-migration snapshot (the database did not exist before this deploy): nothing restored".into();
    };
    let login = match crate::services::require_pg_login(ctx.state, &ctx.app.id, &pg.database).await
    {
        Ok(login) => login,
        Err(e) => return format!("restoring the pre-migration snapshot FAILED: {e}"),
    };
    match ctx.state.pg.restore(&pg.database, &login, file).await {
        Ok(done) => format!("database restored to its pre-migration snapshot: {done}"),
        Err(e) => format!(
            "restoring the pre-migration snapshot {} FAILED: {e}",
            file.display()
        ),
    }
}
