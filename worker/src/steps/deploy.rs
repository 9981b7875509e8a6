use std::collections::BTreeMap;

use norn_shared::domain::Step;

use crate::adapters::InstanceSpec;
use crate::pipeline::{DeployCtx, NewInstance, StepFailure, StepOutput};

/// Starts the new release beside the old one; nothing is switched yet.
/// Instances an interrupted attempt of this deployment left are removed
/// first: they may sit on a machine that is gone, and were never routed.
pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let image = ctx.image()?.to_owned();
    let mut output = String::new();
    for name in deployment_instances(ctx).await {
        ctx.state
            .runtime
            .remove(&name)
            .await
            .map_err(|e| StepFailure::new(format!("removing leftover {name}: {e}")))?;
        output.push_str(&format!("removed {name}, left by an interrupted attempt\n"));
    }
    let processes: Vec<_> = ctx
        .app
        .spec
        .services()
        .map(|(name, p)| (name.clone(), p.clone()))
        .collect();
    if processes.is_empty() {
        return Ok(StepOutput::skipped("no long-running processes"));
    }
    let app_env = crate::services::app_env(ctx.state, &ctx.app.id, &ctx.app.spec)
        .await
        .map_err(|e| StepFailure::with_output(e.to_string(), output.clone()))?;
    for (process, spec) in processes {
        for replica in 0..spec.replicas {
            let mut env = app_env.clone();
            if let Some(port) = spec.port {
                env.insert("PORT".into(), port.to_string());
            }
            let instance = InstanceSpec {
                name: format!(
                    "{}-{process}-{}-{}-{replica}",
                    ctx.app.id,
                    ctx.short_id(),
                    ctx.token
                ),
                image: image.clone(),
                command: spec.command.clone(),
                env,
                memory_mb: spec.memory_mb,
                labels: BTreeMap::from([
                    ("norn.app".into(), ctx.app.id.clone()),
                    ("norn.process".into(), process.clone()),
                    ("norn.deployment".into(), ctx.deployment_id.clone()),
                    ("norn.replica".into(), replica.to_string()),
                    ("norn.attempt".into(), ctx.token.to_string()),
                ]),
            };
            let started = ctx.state.runtime.start(&instance).await.map_err(|e| {
                StepFailure::with_output(format!("starting {}: {e}", instance.name), output.clone())
            })?;
            output.push_str(&format!("started {} at {}\n", started.name, started.ip));
            ctx.started.push(NewInstance {
                process: process.clone(),
                port: spec.port,
                instance: started,
            });
        }
    }
    Ok(StepOutput::done(output))
}

/// Removes what this attempt started: its instances and the one-off
/// container of `step`, if it runs one. Safe when another worker has taken
/// the deployment over, since every name carries this attempt's token.
pub async fn discard_attempt(ctx: &mut DeployCtx<'_>, step: Step) {
    let mut names: Vec<String> = ctx.started.drain(..).map(|n| n.instance.name).collect();
    let one_off = match step {
        Step::Test => Some(ctx.one_off_name("test")),
        Step::Migrate => Some(ctx.one_off_name("migrate")),
        _ => None,
    };
    names.extend(one_off.clone());
    for name in names {
        if let Err(e) = ctx.state.runtime.remove(&name).await {
            tracing::warn!(container = %name, error = %e, "could not remove a container of this attempt");
        }
    }
    // A step dropped while its create request was in flight: the engine may
    // still create the one-off after the removal above found nothing.
    if let Some(name) = one_off {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if let Err(e) = ctx.state.runtime.remove(&name).await {
            tracing::warn!(container = %name, error = %e, "could not remove a container of this attempt");
        }
    }
}

/// After a failure, while this worker still holds the lease: removes every
/// instance of the deployment, whichever attempt started it, so the previous
/// release stays the only one serving.
pub async fn discard_deployment(ctx: &mut DeployCtx<'_>) {
    if let Err(e) = super::healthy::take_back_traffic(ctx).await {
        // Traffic may still be on these instances; the next lease holder
        // takes it back before removing them.
        tracing::warn!(error = %e.reason, "could not take traffic back; instances kept");
        return;
    }
    for name in deployment_instances(ctx).await {
        if let Err(e) = ctx.state.runtime.remove(&name).await {
            tracing::warn!(container = %name, error = %e, "could not remove failed instance");
        }
    }
}

async fn deployment_instances(ctx: &DeployCtx<'_>) -> Vec<String> {
    match ctx.state.runtime.instances(&ctx.app.id).await {
        Ok(list) => list
            .into_iter()
            .filter(|(_, dep)| *dep == ctx.deployment_id)
            .map(|(name, _)| name)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not list the deployment's instances");
            Vec::new()
        }
    }
}
