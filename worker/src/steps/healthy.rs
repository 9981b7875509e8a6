use std::collections::BTreeMap;
use std::time::Duration;

use norn_shared::db::lease;
use norn_shared::db::routes::{self, Route};
use tokio::time::Instant;

use norn_shared::domain::Step;

use super::probe;
use crate::pipeline::abort;
use crate::pipeline::{DeployCtx, NewInstance, StepFailure, StepOutput};

const POLL: Duration = Duration::from_millis(200);

/// Waits until every new instance answers, switches traffic to them, keeps
/// probing them while the previous release drains (cleanup retires it). A new
/// release that fails after the switch gets the previous routes back
/// (`deployPolicy.autoRollback`, default on) and the step fails.
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
    let previous = {
        let mut conn = ctx.state.pool.acquire().await.map_err(db)?;
        routes::for_app(&mut conn, &ctx.app.id).await.map_err(db)?
    };
    switch_routes(ctx, &previous, &mut output).await?;
    if let Err(reason) = settle(ctx).await {
        if !ctx.app.spec.deploy_policy.auto_rollback {
            output.push_str(&format!(
                "unhealthy after the switch ({reason}); deployPolicy.autoRollback is off, so it stays live\n"
            ));
        } else {
            let back = restore_routes(ctx, &previous).await?;
            return Err(StepFailure::with_output(
                format!("unhealthy after the switch ({reason}); rolled back: {back}"),
                output,
            ));
        }
    }
    // The previous release is retired by the cleanup step, once this step is
    // recorded: until then a crash may still hand traffic back to it.
    Ok(StepOutput::done(output))
}

/// A database error is Norn's trouble, not the release's: the job is retried
/// and the deployment resumed, instead of failing it.
fn db(e: sqlx::Error) -> StepFailure {
    StepFailure::infra(e.to_string())
}

/// The drain period after the switch doubles as a last check: every new
/// instance is probed at least once, then every poll until the grace ends.
async fn settle(ctx: &DeployCtx<'_>) -> Result<(), String> {
    let until = Instant::now() + ctx.state.config.drain_grace;
    loop {
        for new in &ctx.started {
            probe::once(ctx, new).await?;
        }
        if Instant::now() >= until {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_ready(
    ctx: &DeployCtx<'_>,
    new: &NewInstance,
    deadline: Instant,
) -> Result<String, String> {
    loop {
        // Before the switch a cancel still stops the release from going live.
        if let Some(a) = abort::current(&ctx.abort) {
            return Err(format!("stopped before the switch: {a:?}"));
        }
        let last = match probe::once(ctx, new).await {
            Ok(line) => return Ok(line),
            Err(e) => e,
        };
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
        if Instant::now() >= deadline {
            return Err(format!(
                "{} not healthy after {}: {last}",
                new.instance.name,
                crate::pipeline::human(ctx.deadline(Step::Healthy))
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn switch_routes(
    ctx: &DeployCtx<'_>,
    previous: &[Route],
    output: &mut String,
) -> Result<(), StepFailure> {
    let mut upstreams: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for new in &ctx.started {
        if let Some(port) = new.port {
            upstreams
                .entry(&new.process)
                .or_default()
                .push(format!("{}:{port}", new.instance.ip));
        }
    }
    // Only the attempt that still holds the lease may put its release live.
    let mut tx = lease::fenced(&ctx.state.pool, &ctx.app.id, ctx.token)
        .await
        .map_err(db)?
        .ok_or_else(|| StepFailure::new("the app lease passed to another worker"))?;
    routes::record_previous(&mut tx, &ctx.deployment_id, previous)
        .await
        .map_err(db)?;
    for (process, addrs) in &upstreams {
        let route = Route {
            app: ctx.app.id.clone(),
            process: (*process).to_owned(),
            upstream: addrs.join(","),
            deployment_id: ctx.deployment_id.clone(),
        };
        routes::set(&mut tx, &route).await.map_err(db)?;
        output.push_str(&format!("routed {process} -> {}\n", route.upstream));
    }
    tx.commit().await.map_err(db)?;
    Ok(())
}

/// When traffic is on this deployment but it is not confirmed healthy (an
/// attempt died during the drain, or it is being failed or discarded), puts
/// back the routes it replaced, so no route is left naming containers about
/// to be removed (their addresses would go to other containers, possibly
/// another app's). Fenced. `Some(what)` when it moved traffic.
pub async fn take_back_traffic(ctx: &DeployCtx<'_>) -> Result<Option<String>, StepFailure> {
    let mut conn = ctx.state.pool.acquire().await.map_err(db)?;
    let live = routes::for_app(&mut conn, &ctx.app.id)
        .await
        .map_err(db)?
        .iter()
        .any(|r| r.deployment_id == ctx.deployment_id);
    if !live {
        return Ok(None);
    }
    let recorded = routes::previous_of(&mut conn, &ctx.deployment_id)
        .await
        .map_err(db)?
        .unwrap_or_default();
    drop(conn);
    // Only to a release that still runs: a route naming removed containers
    // is worse than no route.
    let mut previous = Vec::new();
    for route in recorded {
        if release_running(ctx, &route.deployment_id).await {
            previous.push(route);
        }
    }
    restore_routes(ctx, &previous).await.map(Some)
}

async fn release_running(ctx: &DeployCtx<'_>, deployment: &str) -> bool {
    let Ok(instances) = ctx.state.runtime.instances(&ctx.app.id).await else {
        return false;
    };
    for (name, dep) in instances {
        if dep == deployment && ctx.state.runtime.is_running(&name).await.unwrap_or(false) {
            return true;
        }
    }
    false
}

/// Puts the routes of `app` back to `previous` (none: the app had no release).
/// Fenced like the switch. Returns what traffic went back to.
async fn restore_routes(ctx: &DeployCtx<'_>, previous: &[Route]) -> Result<String, StepFailure> {
    let mut tx = lease::fenced(&ctx.state.pool, &ctx.app.id, ctx.token)
        .await
        .map_err(db)?
        .ok_or_else(|| StepFailure::new("the app lease passed to another worker"))?;
    routes::remove_app(&mut tx, &ctx.app.id).await.map_err(db)?;
    for route in previous {
        routes::set(&mut tx, route).await.map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(match previous.first() {
        Some(r) => format!("traffic is back on deployment {}", r.deployment_id),
        None => "the app had no earlier release; it has no route now".into(),
    })
}
