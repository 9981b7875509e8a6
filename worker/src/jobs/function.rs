//! The function job: start one execution (at most once, whatever the
//! delivery count), run `sh -c <command>` in the image it was invoked on
//! with the request on stdin, and end it with its outcome.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{BoxDynError, Data};
use norn_shared::db::apps;
use norn_shared::db::functions::{self, Execution, Outcome, Started, Status};
use norn_shared::infraspec::InfraSpec;
use norn_shared::jobs::FunctionJob;
use norn_shared::text::Tail;

use crate::WorkerError;
use crate::adapters::{Finished, Limits, MaskedTail, OneOff};
use crate::state::WorkerState;

/// Output kept per execution (its end, like step logs).
const MAX_OUTPUT: usize = 1 << 20;

pub async fn run(job: FunctionJob, state: Data<Arc<WorkerState>>) -> Result<(), BoxDynError> {
    let state: Arc<WorkerState> = (*state).clone();
    let _busy = state.busy();
    execute(&job, &state).await.map_err(|e| {
        tracing::error!(app = %job.app, execution = job.execution_id, error = %e,
            "function job failed; it will be retried");
        Box::new(e) as BoxDynError
    })
}

async fn execute(job: &FunctionJob, state: &WorkerState) -> Result<(), WorkerError> {
    let mut conn = state.pool.acquire().await?;
    let Some(execution) = functions::get(&mut conn, job.execution_id).await? else {
        return Ok(());
    };
    if execution.status != Status::Queued {
        // A redelivered job of a run that started (or was cancelled): never twice.
        return Ok(());
    }
    let spec = apps::get(&mut conn, &execution.app)
        .await
        .ok()
        .flatten()
        .map(|a| a.spec);
    drop(conn);
    // `_` separates: app and process names cannot contain it.
    let container = format!(
        "{}_{}_fn_{}",
        execution.app, execution.process, execution.id
    );
    let mut tx = state.pool.begin().await?;
    let started = functions::start(&mut tx, execution.id, &state.node_id, &container).await?;
    tx.commit().await?;
    let Some(started) = started else {
        return Ok(());
    };
    let concurrency = spec
        .as_ref()
        .and_then(|s| s.processes.get(&execution.process)?.function.as_ref())
        .map_or(10, |f| f.concurrency);
    let outcome = match spec {
        Some(spec) => run_started(state, &spec, started, container).await,
        None => Outcome::failed(Status::Failed, "the app no longer exists"),
    };
    let mut tx = state.pool.begin().await?;
    let ended = functions::end(&mut tx, execution.id, &outcome, concurrency)
        .await
        .map_err(|e| WorkerError::Interrupted(format!("ending the execution: {e}")))?;
    tx.commit().await?;
    if let Some(ended) = ended {
        tracing::info!(app = %ended.app, execution = ended.id, status = ended.status.as_str(),
            duration_ms = ended.duration_ms, "function run ended");
    }
    Ok(())
}

/// Runs a started execution to its outcome; every failure is an outcome.
async fn run_started(
    state: &WorkerState,
    spec: &InfraSpec,
    started: Started,
    container: String,
) -> Outcome {
    let execution = &started.execution;
    let Some((command, policy)) = spec
        .processes
        .get(&execution.process)
        .and_then(|p| Some((p.command.clone()?, p.function.clone()?)))
    else {
        let reason = format!("the app no longer has function {}", execution.process);
        return Outcome::failed(Status::Failed, reason);
    };
    let Some(image) = execution.image_tag.clone() else {
        return Outcome::failed(Status::Failed, "no image recorded for the invocation");
    };
    let mut env = match crate::services::app_env(state, &execution.app, spec).await {
        Ok(env) => env,
        Err(e) => return Outcome::failed(Status::Failed, e.to_string()),
    };
    env.extend(request_env(execution));
    let masker = match crate::services::masker(state, &execution.app).await {
        Ok(m) => m,
        Err(e) => {
            let reason = format!("could not read the app's secrets: {e}");
            return Outcome::failed(Status::Failed, reason);
        }
    };
    let mut output = MaskedTail {
        masker,
        tail: Tail::new(MAX_OUTPUT),
    };
    let timeout = Duration::from_millis(execution.timeout_ms.max(1) as u64);
    let job = OneOff {
        name: container,
        image,
        command,
        env,
        labels: BTreeMap::from([
            ("norn.app".into(), execution.app.clone()),
            ("norn.job".into(), "function".into()),
            ("norn.function".into(), execution.process.clone()),
            (
                crate::adapters::invoke::EXECUTION_LABEL.into(),
                execution.id.to_string(),
            ),
            (
                crate::adapters::invoke::NODE_LABEL.into(),
                state.node_id.clone(),
            ),
        ]),
        timeout,
        limits: Some(Limits {
            memory_mb: policy.memory_mb,
            cpus: 1.0,
            pids: state.config.container_pids,
        }),
    };
    let registered = state.invocations.register(execution.id);
    let finished = tokio::select! {
        finished = state.runtime.invoke(&job, started.input.into(), &mut output) => Some(finished),
        () = registered.cancelled.notified() => None,
    };
    drop(registered);
    let Some(finished) = finished else {
        if let Err(e) = state.runtime.remove(&job.name).await {
            tracing::warn!(container = %job.name, error = %e, "could not remove a cancelled function's container");
        }
        let mut outcome = Outcome::failed(Status::Canceled, "canceled");
        (outcome.output, outcome.output_truncated) = finish_output(output);
        return outcome;
    };
    let (text, truncated) = finish_output(output);
    let mut outcome = match finished {
        Ok(Finished::Exited { exit_code }) => Outcome {
            status: if exit_code == 0 {
                Status::Succeeded
            } else {
                Status::Failed
            },
            exit_code: Some(exit_code as i32),
            output: None,
            output_truncated: false,
            reason: (exit_code != 0).then(|| format!("exited with {exit_code}")),
        },
        Ok(Finished::TimedOut) => {
            Outcome::failed(Status::TimedOut, format!("timed out after {timeout:?}"))
        }
        Ok(Finished::OutOfMemory) => Outcome::failed(
            Status::Failed,
            format!("killed: out of memory (limit {} MiB)", policy.memory_mb),
        ),
        Err(e) => Outcome::failed(Status::Failed, format!("could not run the container: {e}")),
    };
    (outcome.output, outcome.output_truncated) = (text, truncated);
    outcome
}

fn finish_output(output: MaskedTail) -> (Option<String>, bool) {
    let (text, dropped) = output.finish_counting();
    (Some(text), dropped > 0)
}

/// The request as the function sees it.
fn request_env(execution: &Execution) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        (
            "NORN_REQUEST_METHOD".into(),
            execution.request_method.clone(),
        ),
        ("NORN_REQUEST_PATH".into(), execution.request_path.clone()),
        ("NORN_REQUEST_QUERY".into(), execution.request_query.clone()),
        ("NORN_EXECUTION_ID".into(), execution.id.to_string()),
        ("NORN_FUNCTION".into(), execution.process.clone()),
    ]);
    if let Some(ct) = &execution.content_type {
        env.insert("NORN_REQUEST_CONTENT_TYPE".into(), ct.clone());
    }
    env
}
