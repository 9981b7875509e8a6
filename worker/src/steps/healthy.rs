use std::collections::BTreeMap;
use std::time::Duration;

use norn_shared::db::lease;
use norn_shared::db::routes::{self, Route};
use tokio::time::Instant;

use norn_shared::domain::Step;

use crate::pipeline::abort;
use crate::pipeline::{DeployCtx, NewInstance, StepFailure, StepOutput};

const POLL: Duration = Duration::from_millis(200);

/// Waits until every new instance answers, switches traffic to them, then
/// retires the previous release after a drain grace period.
pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    if ctx.started.is_empty() {
        return Ok(StepOutput::skipped("nothing was started"));
    }
    let deadline = Instant::now() + ctx.deadline(Step::Healthy);
    let mut output = String::new();
    for new in &ctx.started {
        let line = wait_ready(ctx, new, deadline)
            .await
            .map_err(|reason| StepFailure::with_output(reason, output.clone()))?;
        output.push_str(&line);
        output.push('\n');
    }
    switch_routes(ctx, &mut output).await?;
    retire_previous(ctx, &mut output).await;
    Ok(StepOutput::done(output))
}

async fn wait_ready(
    ctx: &DeployCtx<'_>,
    new: &NewInstance,
    deadline: Instant,
) -> Result<String, String> {
    let health = ctx
        .app
        .spec
        .processes
        .get(&new.process)
        .and_then(|p| p.health.clone());
    let mut last = String::from("no answer yet");
    loop {
        // Before the switch a cancel still stops the release from going live.
        if let Some(a) = abort::current(&ctx.abort) {
            return Err(format!("stopped before the switch: {a:?}"));
        }
        if !ctx
            .state
            .runtime
            .is_running(&new.instance.name)
            .await
            .unwrap_or(false)
        {
            return Err(format!(
                "{} exited before becoming healthy",
                new.instance.name
            ));
        }
        let probe: Result<(), String> = match (new.port, &health) {
            (Some(port), Some(h)) => {
                let url = format!("http://{}:{port}{}", new.instance.ip, h.path);
                match ctx.state.http.get(&url).timeout(h.timeout).send().await {
                    Ok(resp) if resp.status().is_success() || resp.status().is_redirection() => {
                        return Ok(format!(
                            "{} answered {} on {}",
                            new.instance.name,
                            resp.status().as_u16(),
                            h.path
                        ));
                    }
                    Ok(resp) => Err(format!("{url} answered {}", resp.status())),
                    Err(e) => Err(format!("{url}: {e}")),
                }
            }
            (Some(port), None) => {
                let addr = format!("{}:{port}", new.instance.ip);
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::TcpStream::connect(&addr),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        return Ok(format!(
                            "{} accepts connections on {port}",
                            new.instance.name
                        ));
                    }
                    Ok(Err(e)) => Err(format!("{addr}: {e}")),
                    Err(_) => Err(format!("{addr}: connect timed out")),
                }
            }
            (None, _) => return Ok(format!("{} is running", new.instance.name)),
        };
        if let Err(e) = probe {
            last = e;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} not healthy after {:?}: {last}",
                new.instance.name,
                crate::pipeline::human(ctx.deadline(Step::Healthy))
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn switch_routes(ctx: &DeployCtx<'_>, output: &mut String) -> Result<(), StepFailure> {
    let mut upstreams: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for new in &ctx.started {
        if let Some(port) = new.port {
            upstreams
                .entry(&new.process)
                .or_default()
                .push(format!("{}:{port}", new.instance.ip));
        }
    }
    let mut tx = ctx
        .state
        .pool
        .begin()
        .await
        .map_err(|e| StepFailure::new(e.to_string()))?;
    // Only the attempt that still holds the lease may put its release live.
    let ours = lease::fence(&mut tx, &ctx.app.id, ctx.token)
        .await
        .map_err(|e| StepFailure::new(e.to_string()))?;
    if !ours {
        return Err(StepFailure::new("the app lease passed to another worker"));
    }
    for (process, addrs) in &upstreams {
        let route = Route {
            app: ctx.app.id.clone(),
            process: (*process).to_owned(),
            upstream: addrs.join(","),
            deployment_id: ctx.deployment_id.clone(),
        };
        routes::set(&mut tx, &route)
            .await
            .map_err(|e| StepFailure::new(e.to_string()))?;
        output.push_str(&format!("routed {process} -> {}\n", route.upstream));
    }
    tx.commit()
        .await
        .map_err(|e| StepFailure::new(e.to_string()))?;
    Ok(())
}

async fn retire_previous(ctx: &DeployCtx<'_>, output: &mut String) {
    let old = match ctx.state.runtime.instances(&ctx.app.id).await {
        Ok(list) => list
            .into_iter()
            // Everything of the app but this release, including what an
            // interrupted attempt of this very deployment left behind.
            .map(|(name, _)| name)
            .filter(|name| !ctx.started.iter().any(|n| n.instance.name == *name))
            .collect::<Vec<_>>(),
        Err(e) => {
            output.push_str(&format!("could not list previous instances: {e}\n"));
            return;
        }
    };
    if old.is_empty() {
        return;
    }
    // Requests already routed to the old release finish before it stops.
    tokio::time::sleep(ctx.state.config.drain_grace).await;
    for name in old {
        match ctx.state.runtime.remove(&name).await {
            Ok(()) => output.push_str(&format!("retired {name}\n")),
            Err(e) => output.push_str(&format!("could not retire {name}: {e}\n")),
        }
    }
}
