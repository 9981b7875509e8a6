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

async fn execute(job: &FunctionJob, state: &Arc<WorkerState>) -> Result<(), WorkerError> {
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
    let concurrency = spec
        .as_ref()
        .and_then(|s| s.processes.get(&execution.process)?.function.as_ref())
        .map_or(10, |f| f.concurrency);
    // Everything that can be known before the run starts, so a warm
    // container can be picked before it is recorded as the run's.
    let plan = match &spec {
        Some(spec) => plan(state, spec, &execution).await,
        None => Err(Outcome::failed(Status::Failed, "the app no longer exists")),
    };
    let warm = match &plan {
        Ok(plan) if plan.warm > 0 => take_warm(state, &execution, plan),
        _ => None,
    };
    let container = warm.clone().unwrap_or_else(|| cold_name(&execution));
    let mut tx = state.pool.begin().await?;
    let started = functions::start(&mut tx, execution.id, &state.node_id, &container).await?;
    tx.commit().await?;
    let Some(started) = started else {
        if let (Some(name), Ok(plan)) = (warm, &plan) {
            let key = crate::warm::key_of(&plan.template);
            if let Some(stale) = state
                .warm
                .put_back(&execution.app, &execution.process, key, name)
            {
                crate::warm::remove(state, vec![stale]).await;
            }
        }
        return Ok(());
    };
    let outcome = match plan {
        Ok(plan) => run_planned(state, plan, started, warm).await,
        Err(outcome) => outcome,
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

/// `_` separates: app and process names cannot contain it.
fn cold_name(execution: &Execution) -> String {
    format!(
        "{}_{}_fn_{}",
        execution.app, execution.process, execution.id
    )
}

/// What a run needs besides its request: the container template (the
/// app's env, no request variables), the masker and the pool size.
struct Plan {
    template: OneOff,
    masker: norn_shared::text::Masker,
    memory_mb: u32,
    warm: u32,
}

async fn plan(
    state: &WorkerState,
    spec: &InfraSpec,
    execution: &Execution,
) -> Result<Plan, Outcome> {
    let Some((command, policy)) = spec
        .processes
        .get(&execution.process)
        .and_then(|p| Some((p.command.clone()?, p.function.clone()?)))
    else {
        let reason = format!("the app no longer has function {}", execution.process);
        return Err(Outcome::failed(Status::Failed, reason));
    };
    let Some(image) = execution.image_tag.clone() else {
        return Err(Outcome::failed(
            Status::Failed,
            "no image recorded for the invocation",
        ));
    };
    let env = crate::services::app_env(state, &execution.app, spec)
        .await
        .map_err(|e| Outcome::failed(Status::Failed, e.to_string()))?;
    let masker = crate::services::masker(state, &execution.app)
        .await
        .map_err(|e| {
            let reason = format!("could not read the app's secrets: {e}");
            Outcome::failed(Status::Failed, reason)
        })?;
    let template = OneOff {
        name: String::new(),
        image,
        command,
        env,
        labels: BTreeMap::from([
            ("norn.app".into(), execution.app.clone()),
            ("norn.job".into(), "function".into()),
            ("norn.function".into(), execution.process.clone()),
            (
                crate::adapters::invoke::NODE_LABEL.into(),
                state.node_id.clone(),
            ),
        ]),
        timeout: Duration::from_millis(execution.timeout_ms.max(1) as u64),
        limits: Some(Limits {
            memory_mb: policy.memory_mb,
            cpus: 1.0,
            pids: state.config.container_pids,
        }),
    };
    Ok(Plan {
        template,
        masker,
        memory_mb: policy.memory_mb,
        warm: policy.warm,
    })
}

/// A ready warm container for this run, if the pool has one; either way the
/// pool is topped up again, and containers made for an older release or
/// older secrets are removed.
fn take_warm(state: &Arc<WorkerState>, execution: &Execution, plan: &Plan) -> Option<String> {
    let key = crate::warm::key_of(&plan.template);
    let (taken, stale) = state.warm.take(&execution.app, &execution.process, key);
    if !stale.is_empty() {
        let state = state.clone();
        tokio::spawn(async move { crate::warm::remove(&state, stale).await });
    }
    crate::warm::refill(
        state.clone(),
        execution.app.clone(),
        execution.process.clone(),
        plan.template.clone(),
        plan.warm,
    );
    taken
}

/// Runs a started execution to its outcome; every failure is an outcome.
async fn run_planned(
    state: &WorkerState,
    plan: Plan,
    started: Started,
    warm: Option<String>,
) -> Outcome {
    let execution = &started.execution;
    let mut output = MaskedTail {
        masker: plan.masker,
        tail: Tail::new(MAX_OUTPUT),
    };
    let timeout = plan.template.timeout;
    let request = request_env(execution);
    let mut job = plan.template;
    job.labels.insert(
        crate::adapters::invoke::EXECUTION_LABEL.into(),
        execution.id.to_string(),
    );
    let registered = state.invocations.register(execution.id);
    let run = async {
        if let Some(name) = &warm {
            let mut input = crate::warm::request_line(&request).into_bytes();
            input.extend_from_slice(&started.input);
            match state
                .runtime
                .invoke_warm(name, timeout, input.into(), &mut output)
                .await
            {
                Ok(finished) => return (name.clone(), Ok(finished)),
                // Gone while it waited (an engine restart): run it cold.
                Err(e) => tracing::warn!(container = %name, error = %e,
                    "a warm container could not be used; running cold"),
            }
        }
        job.name = cold_name(execution);
        job.env.extend(request.clone());
        let finished = state
            .runtime
            .invoke(&job, started.input.clone().into(), &mut output)
            .await;
        (job.name.clone(), finished)
    };
    let ran = tokio::select! {
        ran = run => Some(ran),
        () = registered.cancelled.notified() => None,
    };
    drop(registered);
    let Some((_, finished)) = ran else {
        // Whichever container the run was in (warm, or cold after it).
        for name in warm.iter().chain([&cold_name(execution)]) {
            if let Err(e) = state.runtime.remove(name).await {
                tracing::warn!(container = %name, error = %e, "could not remove a cancelled function's container");
            }
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
            format!("killed: out of memory (limit {} MiB)", plan.memory_mb),
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
