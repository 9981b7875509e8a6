//! The deploy job: take the app lease, run the pipeline, release the lease.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{BoxDynError, Data};
use norn_shared::db::deployments::{self, Update};
use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::db::{apps, lease};
use norn_shared::domain::{DeploymentStatus, GitRef};
use norn_shared::events::{self, Event};
use norn_shared::jobs::DeployJob;
use serde_json::json;
use sqlx::postgres::PgListener;
use tracing::Instrument;

use crate::WorkerError;
use crate::pipeline::{self, DeployCtx, record::Recorder};
use crate::state::WorkerState;

const LEASE_TTL: Duration = Duration::from_secs(30);
const LEASE_RENEW: Duration = Duration::from_secs(5);
const RESTARTED: &str = "norn restarted during deployment";

pub async fn run(job: DeployJob, state: Data<Arc<WorkerState>>) -> Result<(), BoxDynError> {
    let state: Arc<WorkerState> = (*state).clone();
    let span = tracing::info_span!("deploy", app = %job.app, deployment.id = %job.deployment_id);
    match execute(&job, &state).instrument(span.clone()).await {
        Ok(()) => Ok(()),
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
    drop(conn);
    let status = deployment.status();
    if status.is_terminal() {
        return Ok(());
    }
    let holder = format!("{}/{}", state.token, job.deployment_id);
    if status != DeploymentStatus::Queued {
        return recover_interrupted(job, state).await;
    }
    let app = {
        let mut conn = state.pool.acquire().await?;
        apps::get(&mut conn, &job.app).await?
    };
    let Some(app) = app else {
        fail_before_start(state, job, &format!("app {} is not registered", job.app)).await?;
        return Ok(());
    };
    let git_ref = GitRef::parse(&deployment.git_ref).unwrap_or_else(|_| GitRef::head());

    wait_for_lease(state, &job.app, &holder).await?;
    // Aborted on drop: a cancelled handler must stop renewing, so the lease expires.
    let renew = AbortOnDrop(tokio::spawn(keep_lease(
        state.pool.clone(),
        job.app.clone(),
        holder.clone(),
    )));
    let mut ctx = DeployCtx {
        state,
        workdir: state.config.work_dir.join(&job.deployment_id),
        app,
        deployment_id: job.deployment_id.clone(),
        git_ref,
        sha: None,
        image: None,
        started: Vec::new(),
    };
    let mut rec = Recorder::new(
        state.pool.clone(),
        &job.deployment_id,
        &job.app,
        &state.config.node_name,
    );
    let result = pipeline::run(&mut ctx, &mut rec).await;
    drop(renew);
    let mut conn = state.pool.acquire().await?;
    lease::release(&mut conn, &job.app, &holder).await?;
    result
}

/// The job was delivered again while its deployment is in flight: either the
/// worker running it is still alive (it holds the app lease for this
/// deployment; nothing to do) or it died mid-pipeline.
async fn recover_interrupted(job: &DeployJob, state: &WorkerState) -> Result<(), WorkerError> {
    let live: Option<(String,)> = sqlx::query_as(
        "SELECT holder FROM app_leases WHERE app = $1 AND expires_at > now() AND holder LIKE '%/' || $2",
    )
    .bind(&job.app)
    .bind(&job.deployment_id)
    .fetch_optional(&state.pool)
    .await?;
    if live.is_some() {
        tracing::info!("deployment is running on another worker; ignoring the duplicate delivery");
        return Ok(());
    }
    tracing::warn!("deployment was interrupted by a crash; marking it failed");
    fail_before_start(state, job, RESTARTED).await
}

async fn fail_before_start(
    state: &WorkerState,
    job: &DeployJob,
    reason: &str,
) -> Result<(), WorkerError> {
    let mut tx = state.pool.begin().await?;
    deployments::update(
        &mut tx,
        &job.deployment_id,
        &Update {
            status: Some(DeploymentStatus::Failed),
            error: Some(reason),
            ..Default::default()
        },
    )
    .await?;
    saga::append(
        &mut tx,
        NewSagaEvent {
            saga_id: &job.deployment_id,
            app: &job.app,
            category: "deploy",
            action: "deploy.failed",
            step: None,
            message: reason,
            actor: "recovery",
            metadata: json!({}),
        },
    )
    .await?;
    events::publish(
        &mut tx,
        &Event::new(
            "deploy.failed",
            &job.app,
            json!({"deploymentId": job.deployment_id, "error": reason}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Blocks until this deployment holds the app's lease. Woken by the release
/// NOTIFY; the timed retry covers leases that expire instead of being released.
async fn wait_for_lease(state: &WorkerState, app: &str, holder: &str) -> Result<(), WorkerError> {
    let mut listener: Option<PgListener> = None;
    loop {
        if lease::try_acquire(&state.pool, app, holder, "deploy", LEASE_TTL).await? {
            return Ok(());
        }
        if listener.is_none() {
            let mut l = PgListener::connect_with(&state.pool).await?;
            l.listen(lease::RELEASED_CHANNEL).await?;
            listener = Some(l);
            tracing::info!("waiting for the app's current operation to finish");
            continue;
        }
        if let Some(l) = listener.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), l.recv()).await;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn keep_lease(pool: sqlx::PgPool, app: String, holder: String) {
    let mut tick = tokio::time::interval(LEASE_RENEW);
    loop {
        tick.tick().await;
        match lease::extend(&pool, &app, &holder, LEASE_TTL).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(app = %app, "lost the app lease");
                return;
            }
            Err(e) => tracing::warn!(app = %app, error = %e, "could not extend the app lease"),
        }
    }
}
