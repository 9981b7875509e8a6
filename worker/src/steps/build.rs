use norn_shared::domain::GitRef;

use crate::adapters::Output;
use crate::pipeline::{DeployCtx, StepFailure, StepOutput};

pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let mut log = String::new();
    if !ctx.workdir.exists()
        && let Some(sha) = ctx.sha.clone()
    {
        // Resumed on another worker: the clone step's checkout was on the
        // dead one. Fetch exactly the commit it recorded.
        let at = GitRef::parse(&sha).map_err(|e| StepFailure::new(e.to_string()))?;
        let checkout = super::clone::fetch(ctx, at).await?;
        log.push_str(&format!("re-fetched {} for this attempt\n", checkout.sha));
    }
    let dockerfile = ctx.app.spec.build.dockerfile.clone();
    if !ctx.workdir.join(&dockerfile).is_file() {
        return Err(StepFailure::new(format!(
            "{dockerfile} not found in the checkout"
        )));
    }
    let tag = format!("{}:{}", ctx.app.id, ctx.sha12());
    ctx.log.write(&log).await;
    // The build's output streams into the step log as it comes.
    let builder = ctx.state.builder.clone();
    if let Err(e) = builder
        .build(&ctx.workdir, &dockerfile, &tag, &mut ctx.log)
        .await
    {
        return Err(StepFailure::new(format!("docker build failed: {e}")));
    }
    let image = match ctx.state.config.registry_url.clone() {
        Some(registry) => builder
            .push(&tag, &registry, &mut ctx.log)
            .await
            .map_err(|e| StepFailure::new(format!("pushing {tag} to {registry}: {e}")))?,
        None => tag,
    };
    ctx.image = Some(image);
    Ok(StepOutput::done(""))
}
