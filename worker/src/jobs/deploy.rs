//! The deploy job: take the app lease, run (or resume) the pipeline, release
//! the lease. A delivery of a deployment that is already in flight is a
//! crash-resume: it waits for the dead attempt's lease to expire, then goes on
//! at the interrupted step.

use std::collections::BTreeSet;
use std::sync::Arc;

use apalis::prelude::{BoxDynError, Data};
use norn_shared::db::deployments::{self, Deployment};
use norn_shared::db::{apps, lease};
use norn_shared::domain::{DeploymentKind, GitRef, Step, StepEntry, StepStatus};
use norn_shared::jobs::DeployJob;
use tracing::Instrument;

use super::lease_wait::{self, Turn};
use crate::WorkerError;
use crate::pipeline::abort::{Lease, Watchers};
use crate::pipeline::{self, DeployCtx, STEPS, record::Recorder};
use crate::state::WorkerState;
use crate::steps;

const RESTARTED: &str = "norn restarted during deployment";

pub async fn run(job: DeployJob, state: Data<Arc<WorkerState>>) -> Result<(), BoxDynError> {
    let state: Arc<WorkerState> = (*state).clone();
    let _busy = state.busy();
    let span = tracing::info_span!("deploy", app = %job.app, deployment.id = %job.deployment_id);
    match execute(&job, &state).instrument(span.clone()).await {
        Ok(()) => Ok(()),
        Err(WorkerError::Fenced) => {
            span.in_scope(|| tracing::warn!("another worker took this deployment over; stopped"));
            Ok(())
        }
        Err(e) => {
            // Infrastructure trouble (database gone): let the queue retry the job.
            span.in_scope(|| tracing::error!(error = %e, "deploy job failed; it will be retried"));
            Err(Box::new(e))
        }
    }
}

async fn execute(job: &DeployJob, state: &WorkerState) -> Result<(), WorkerError> {
    let mut conn = state.pool.acquire().await?;
    let Some(deployment) = deployments::get(&mut conn, &job.deployment_id).await? else {
        tracing::warn!("deployment row is missing; dropping the job");
        return Ok(());
    };
    let app = apps::get(&mut conn, &job.app).await?;
    drop(conn);
    if deployment.status().is_terminal() {
        return Ok(());
    }
    let Some(app) = app else {
        let reason = format!("app {} is not registered", job.app);
        return fail_unstarted(state, job, &reason).await;
    };
    // New per delivery: a retry of this job in this very process (after a
    // database error) or a duplicate delivery must not inherit the fencing
    // token of the attempt before it. Ends in `/<deployment>` (the sweep
    // looks for that).
    let holder = format!(
        "{}#{}/{}",
        state.token,
        uuid::Uuid::new_v4().simple(),
        job.deployment_id
    );
    // `None`: the deployment ended meanwhile (canceled, superseded, or
    // finished by the live worker this was a duplicate delivery of).
    let turn = || async {
        let mut conn = state.pool.acquire().await?;
        Ok::<_, WorkerError>(
            match deployments::turn(&mut conn, &job.deployment_id).await? {
                None => Turn::Gone,
                Some(true) => Turn::Go,
                Some(false) => Turn::Wait,
            },
        )
    };
    let Some(token) = lease_wait::acquire(state, &job.app, &holder, "deploy", turn).await? else {
        return Ok(());
    };
    let watchers = Watchers::spawn(
        &state.pool,
        Lease {
            app: job.app.clone(),
            holder: holder.clone(),
            ttl: state.config.lease_ttl,
        },
        Some(&job.deployment_id),
    );
    let mut ctx = DeployCtx {
        state,
        workdir: state.config.work_dir.join(&job.deployment_id),
        git_ref: GitRef::parse(&deployment.git_ref).unwrap_or_else(|_| GitRef::head()),
        app,
        deployment_id: job.deployment_id.clone(),
        sha: None,
        image: None,
        started: Vec::new(),
        token,
        abort: watchers.receiver(),
        snapshot: None,
        migration_undone: false,
        attempt: 0,
        log: crate::pipeline::log::StepLog::detached(),
    };
    let result = attempt(&mut ctx).await;
    drop(watchers);
    let mut conn = state.pool.acquire().await?;
    lease::release(&mut conn, &job.app, &holder).await?;
    result
}

/// One attempt under the lease token `ctx.token`.
async fn attempt(ctx: &mut DeployCtx<'_>) -> Result<(), WorkerError> {
    let state = ctx.state;
    let claimed = {
        let mut tx = lease::fenced(&state.pool, &ctx.app.id, ctx.token)
            .await?
            .ok_or(WorkerError::Fenced)?;
        let d = deployments::begin_attempt(&mut tx, &ctx.deployment_id, ctx.token).await?;
        tx.commit().await?;
        d
    };
    // Ended (canceled, superseded) while it waited for the lease.
    let Some(dep) = claimed else { return Ok(()) };
    ctx.attempt = dep.attempts;
    let (mut done, mut kept) = completed_steps(&dep);
    if dep.kind == DeploymentKind::Rollback {
        skip_build_steps(&dep, &mut done, &mut kept);
    }
    ctx.snapshot = kept
        .iter()
        .find(|e| e.step == Step::Snapshot && e.status == StepStatus::Complete)
        .and_then(|e| e.snapshot.as_deref())
        .map(std::path::PathBuf::from);
    let mut rec = Recorder::new(
        state.pool.clone(),
        &ctx.deployment_id,
        &ctx.app.id,
        &state.config.node_name,
        ctx.token,
        kept,
    );
    // Once `healthy` is recorded the release is live and confirmed: only
    // cleanup is left, and no interruption or cancel undoes it.
    let confirmed = done.contains(&Step::Healthy);
    let stop = if confirmed {
        None
    } else if dep.attempts > state.config.deploy_max_attempts {
        Some((RESTARTED.to_owned(), "recovery".to_owned()))
    } else {
        dep.cancel_requested_by
            .as_ref()
            .map(|by| (format!("canceled by {by}"), by.clone()))
    };
    if let Some((reason, actor)) = stop {
        tracing::warn!(attempts = dep.attempts, reason = %reason, "ending the deployment");
        // Traffic first, then the failed row: whoever sees the deployment
        // failed must never find a route still on it. If it cannot be taken
        // back, the job is retried and the instances are kept meanwhile.
        steps::healthy::take_back_traffic(ctx)
            .await
            .map_err(|f| WorkerError::Interrupted(f.reason))?;
        rec.ended(&reason, &actor).await?;
        steps::deploy::discard_deployment(ctx).await;
        steps::cleanup::remove_workdir(&ctx.workdir).await;
        return Ok(());
    }
    let resume_at = (dep.attempts > 1)
        .then(|| STEPS.into_iter().find(|s| !done.contains(s)))
        .flatten();
    if let Some(step) = resume_at {
        tracing::info!(attempt = dep.attempts, step = %step, "resuming an interrupted deployment");
        // A dead attempt may have switched traffic before it was confirmed
        // healthy; the deploy step is about to replace those instances.
        if !done.contains(&Step::Healthy)
            && let Some(moved) = steps::healthy::take_back_traffic(ctx)
                .await
                .map_err(|f| WorkerError::Interrupted(f.reason))?
        {
            tracing::warn!(what = %moved, "took traffic back from an unconfirmed switch");
        }
    }
    ctx.sha = dep.commit_sha.clone();
    ctx.image = dep.image_tag.clone();

    rec.started(dep.attempts, resume_at).await?;
    pipeline::run(ctx, &mut rec, &done).await
}

/// Steps an earlier attempt finished, and their log entries. `deploy` counts
/// only together with `healthy`: the instances it started belong to the
/// attempt that started them (their machine may be gone), so a resume before
/// the switch starts them again.
fn completed_steps(dep: &Deployment) -> (BTreeSet<Step>, Vec<StepEntry>) {
    let entries = dep.steps.0.clone();
    let finished = |e: &StepEntry| {
        matches!(e.status, StepStatus::Complete | StepStatus::Skipped).then_some(e.step)
    };
    let mut done: BTreeSet<Step> = entries.iter().filter_map(finished).collect();
    if !done.contains(&Step::Healthy) {
        done.remove(&Step::Deploy);
    }
    let kept = entries
        .into_iter()
        .filter(|e| finished(e).is_some_and(|s| done.contains(&s)))
        .collect();
    (done, kept)
}

/// A rollback reuses an earlier release's image: it neither builds nor
/// migrates (its schema is already there), and says so in its step log.
fn skip_build_steps(dep: &Deployment, done: &mut BTreeSet<Step>, kept: &mut Vec<StepEntry>) {
    let why = format!(
        "rollback to {}: reuses image {}",
        dep.rollback_of.as_deref().unwrap_or("?"),
        dep.image_tag.as_deref().unwrap_or("?")
    );
    let skipped = [
        Step::Clone,
        Step::Build,
        Step::Test,
        Step::Snapshot,
        Step::Migrate,
    ];
    for (i, step) in skipped.into_iter().enumerate() {
        if done.insert(step) {
            kept.insert(
                i.min(kept.len()),
                StepEntry::ended(step, StepStatus::Skipped, &why, 0),
            );
        }
    }
}

/// Fails a deployment no worker ever started (no lease involved).
async fn fail_unstarted(
    state: &WorkerState,
    job: &DeployJob,
    reason: &str,
) -> Result<(), WorkerError> {
    let mut tx = state.pool.begin().await?;
    let actor = &state.config.node_name;
    deployments::fail_with_trail(
        &mut tx,
        &job.deployment_id,
        &job.app,
        reason,
        "deploy.failed",
        actor,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
