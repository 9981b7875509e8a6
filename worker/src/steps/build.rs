use crate::pipeline::{DeployCtx, StepFailure, StepOutput};

pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let dockerfile = ctx.app.spec.build.dockerfile.clone();
    if !ctx.workdir.join(&dockerfile).is_file() {
        return Err(StepFailure::new(format!(
            "{dockerfile} not found in the checkout"
        )));
    }
    let tag = format!("{}:{}", ctx.app.id, ctx.sha12());
    let mut log = String::new();
    if let Err(e) = ctx
        .state
        .builder
        .build(&ctx.workdir, &dockerfile, &tag, &mut log)
        .await
    {
        return Err(StepFailure::with_output(
            format!("docker build failed: {e}"),
            log,
        ));
    }
    let image = match &ctx.state.config.registry_url {
        Some(registry) => ctx
            .state
            .builder
            .push(&tag, registry, &mut log)
            .await
            .map_err(|e| {
                StepFailure::with_output(format!("pushing {tag} to {registry}: {e}"), log.clone())
            })?,
        None => tag,
    };
    ctx.image = Some(image);
    Ok(StepOutput::done(log))
}
