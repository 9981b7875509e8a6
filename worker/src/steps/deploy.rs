use std::collections::BTreeMap;

use crate::adapters::InstanceSpec;
use crate::pipeline::{DeployCtx, NewInstance, StepFailure, StepOutput};

/// Starts the new release beside the old one; nothing is switched yet.
pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let image = ctx.image()?.to_owned();
    let processes: Vec<_> = ctx
        .app
        .spec
        .services()
        .map(|(name, p)| (name.clone(), p.clone()))
        .collect();
    if processes.is_empty() {
        return Ok(StepOutput::skipped("no long-running processes"));
    }
    let mut output = String::new();
    for (process, spec) in processes {
        for replica in 0..spec.replicas {
            let mut env = ctx.app.spec.env.clone();
            if let Some(port) = spec.port {
                env.insert("PORT".into(), port.to_string());
            }
            if let Some(pg) = &ctx.app.spec.services.postgres {
                env.insert(
                    "DATABASE_URL".into(),
                    ctx.state.pg.database_url(&pg.database),
                );
            }
            let instance = InstanceSpec {
                name: format!("{}-{process}-{}-{replica}", ctx.app.id, ctx.short_id()),
                image: image.clone(),
                command: spec.command.clone(),
                env,
                labels: BTreeMap::from([
                    ("norn.app".into(), ctx.app.id.clone()),
                    ("norn.process".into(), process.clone()),
                    ("norn.deployment".into(), ctx.deployment_id.clone()),
                    ("norn.replica".into(), replica.to_string()),
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

/// Removes the new release's instances after a failure, so the old release
/// stays the only one serving.
pub async fn discard_new(ctx: &mut DeployCtx<'_>) {
    for new in ctx.started.drain(..) {
        if let Err(e) = ctx.state.runtime.remove(&new.instance.name).await {
            tracing::warn!(container = %new.instance.name, error = %e, "could not remove failed instance");
        }
    }
}
