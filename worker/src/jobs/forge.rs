//! The forge job: under the app lease, forge the app's services, or tear
//! them down. The steps and their fenced writes are in `crate::forge`.

use std::sync::Arc;

use apalis::prelude::{BoxDynError, Data};
use norn_shared::db::{apps, forge as forge_db};
use norn_shared::domain::ForgeStatus;
use norn_shared::jobs::{ForgeAction, ForgeJob};
use norn_shared::text::Tail;
use tracing::Instrument;

use super::lease_wait::{self, Turn};
use crate::WorkerError;
use crate::forge::{Forge, ForgeError, Operation, up_to_date};
use crate::state::WorkerState;

pub async fn run(job: ForgeJob, state: Data<Arc<WorkerState>>) -> Result<(), BoxDynError> {
    let state: Arc<WorkerState> = (*state).clone();
    let _busy = state.busy();
    let span = tracing::info_span!("forge", app = %job.app, job.id = %job.id);
    match execute(&job, &state).instrument(span.clone()).await {
        Ok(()) | Err(WorkerError::Fenced) => Ok(()),
        Err(e) => {
            span.in_scope(|| tracing::error!(error = %e, "forge job failed; it will be retried"));
            Err(Box::new(e))
        }
    }
}

async fn execute(job: &ForgeJob, state: &WorkerState) -> Result<(), WorkerError> {
    let turn = || async { Ok(Turn::Go) };
    let work = |token| operate(job, state, token);
    lease_wait::holding(state, &job.app, "forge", &job.id, turn, work)
        .await
        .map(|_| ())
}

async fn operate(job: &ForgeJob, state: &WorkerState, token: i64) -> Result<(), WorkerError> {
    let (app, current) = {
        let mut conn = state.pool.acquire().await?;
        let app = apps::get(&mut conn, &job.app).await?;
        let current = forge_db::get(&mut conn, &job.app)
            .await
            .map_err(|e| WorkerError::Interrupted(e.to_string()))?;
        (app, current)
    };
    let Some(app) = app else {
        tracing::warn!("the app is no longer registered; nothing to forge");
        return Ok(());
    };
    let forge = Forge {
        state,
        app: &app.id,
        spec: &app.spec,
        token,
        actor: &state.config.node_name,
    };
    if job.action == ForgeAction::RemovePreview {
        return crate::preview::remove(state, &app, current.status, token).await;
    }
    // What was asked may already hold (a second delivery, two requests
    // queued together): then there is nothing to do.
    let ops: Vec<Operation> = match job.action {
        ForgeAction::Forge { force: false } if up_to_date(&current, &app.spec) => vec![],
        ForgeAction::Forge { force: true } if current.status == ForgeStatus::Forged => {
            vec![Operation::Teardown { drop_data: false }, Operation::Forge]
        }
        ForgeAction::Forge { .. } => vec![Operation::Forge],
        ForgeAction::Teardown { .. } if current.status == ForgeStatus::Unforged => vec![],
        ForgeAction::Teardown { drop_data } => vec![Operation::Teardown { drop_data }],
        ForgeAction::RemovePreview => vec![],
    };
    let mut log = Tail::new(64 * 1024);
    for op in ops {
        match forge.operate(op, &mut log).await {
            Ok(_) => tracing::info!(operation = ?op, "forge operation completed"),
            // Recorded (forge_failed, with the step and reason); not retried.
            Err(ForgeError::Step { step, reason }) => {
                tracing::warn!(operation = ?op, step, reason = %reason, "forge operation failed");
                return Ok(());
            }
            Err(ForgeError::Fenced) => return Err(WorkerError::Fenced),
            Err(e) => return Err(WorkerError::Interrupted(e.to_string())),
        }
    }
    Ok(())
}
