//! The restore job: under the app lease, optionally dump the database as it
//! is now, then `pg_restore` the chosen snapshot. Every write is fenced.

use std::sync::Arc;

use apalis::prelude::{BoxDynError, Data};
use norn_shared::db::lease;
use norn_shared::db::restores::{self, Restore, RestoreStatus};
use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::events::{self, Event, EventBody, RestoreEnded};
use norn_shared::jobs::RestoreJob;
use serde_json::json;
use tracing::Instrument;

use super::lease_wait::{self, Turn};
use crate::WorkerError;
use crate::state::WorkerState;

pub async fn run(job: RestoreJob, state: Data<Arc<WorkerState>>) -> Result<(), BoxDynError> {
    let state: Arc<WorkerState> = (*state).clone();
    let _busy = state.busy();
    let span = tracing::info_span!("restore", app = %job.app, restore.id = %job.restore_id);
    match execute(&job, &state).instrument(span.clone()).await {
        Ok(()) | Err(WorkerError::Fenced) => Ok(()),
        Err(e) => {
            span.in_scope(|| tracing::error!(error = %e, "restore job failed; it will be retried"));
            Err(Box::new(e))
        }
    }
}

async fn load(state: &WorkerState, id: &str) -> Result<Option<Restore>, WorkerError> {
    let mut conn = state.pool.acquire().await?;
    Ok(restores::get(&mut conn, id).await?)
}

async fn execute(job: &RestoreJob, state: &WorkerState) -> Result<(), WorkerError> {
    let turn = || async {
        let r = load(state, &job.restore_id).await?;
        let live =
            r.is_some_and(|r| matches!(r.status, RestoreStatus::Queued | RestoreStatus::Running));
        Ok(if live { Turn::Go } else { Turn::Gone })
    };
    let work = |token| restore(job, state, token);
    lease_wait::holding(state, &job.app, "restore", &job.restore_id, turn, work)
        .await
        .map(|_| ())
}

async fn restore(job: &RestoreJob, state: &WorkerState, token: i64) -> Result<(), WorkerError> {
    let Some(r) = load(state, &job.restore_id).await? else {
        return Ok(());
    };
    {
        let mut tx = lease::fenced(&state.pool, &job.app, token)
            .await?
            .ok_or(WorkerError::Fenced)?;
        restores::set_running(&mut tx, &r.id).await?;
        tx.commit().await?;
    }
    let dir = &state.config.snapshots_dir;
    let login = match crate::services::require_pg_login(state, &r.app, &r.database_name).await {
        Ok(login) => login,
        Err(e) => {
            let error = Some(format!("nothing restored: {e}"));
            return finish(state, &r, token, "", None, error).await;
        }
    };
    let mut output = String::new();
    let mut pre_file = None;
    let mut outcome: Result<(), String> = Ok(());
    if r.pre_restore {
        match state
            .pg
            .dump(&r.database_name, &login, "prerestore", dir)
            .await
        {
            Ok(file) => {
                output.push_str(&format!("pre-restore dump: {}\n", file.display()));
                pre_file = Some(file.display().to_string());
            }
            Err(e) => outcome = Err(format!("pre-restore dump failed, nothing restored: {e}")),
        }
    }
    if outcome.is_ok() {
        match state
            .pg
            .restore(&r.database_name, &login, &dir.join(&r.snapshot))
            .await
        {
            Ok(done) => output.push_str(&done),
            Err(e) => outcome = Err(e.to_string()),
        }
    }
    finish(
        state,
        &r,
        token,
        &output,
        pre_file.as_deref(),
        outcome.err(),
    )
    .await
}

async fn finish(
    state: &WorkerState,
    r: &Restore,
    token: i64,
    output: &str,
    pre_file: Option<&str>,
    error: Option<String>,
) -> Result<(), WorkerError> {
    let mut tx = lease::fenced(&state.pool, &r.app, token)
        .await?
        .ok_or(WorkerError::Fenced)?;
    restores::finish(&mut tx, &r.id, output, pre_file, error.as_deref()).await?;
    let (action, message) = match &error {
        None => (
            "snapshot.restored",
            format!("{} restored from {}", r.database_name, r.snapshot),
        ),
        Some(e) => ("snapshot.restore_failed", e.clone()),
    };
    let ended = RestoreEnded {
        restore_id: r.id.clone(),
        message: message.clone(),
    };
    let body = match &error {
        None => EventBody::SnapshotRestored(ended),
        Some(_) => EventBody::SnapshotRestoreFailed(ended),
    };
    saga::append(
        &mut tx,
        NewSagaEvent {
            saga_id: &r.id,
            app: &r.app,
            category: "snapshot",
            action,
            step: None,
            message: &message,
            actor: &state.config.node_name,
            metadata: json!({"snapshot": r.snapshot, "preRestoreFile": pre_file}),
        },
    )
    .await?;
    events::publish(&mut tx, &Event::new(&r.app, body)).await?;
    tx.commit().await?;
    match error {
        None => tracing::info!("restore completed"),
        Some(e) => tracing::warn!(error = %e, "restore failed"),
    }
    Ok(())
}
