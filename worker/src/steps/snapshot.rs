use crate::pipeline::{DeployCtx, StepFailure, StepOutput};

pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let Some(pg) = &ctx.app.spec.services.postgres else {
        return Ok(StepOutput::skipped(
            "no services.postgres.database declared",
        ));
    };
    let tools = &ctx.state.pg;
    let exists = tools
        .exists(&pg.database)
        .await
        .map_err(|e| StepFailure::new(e.to_string()))?;
    if !exists {
        return Ok(StepOutput::skipped(format!(
            "database {} does not exist yet; nothing to snapshot",
            pg.database
        )));
    }
    let file = tools
        .dump(&pg.database, ctx.sha12(), &ctx.state.config.snapshots_dir)
        .await
        .map_err(|e| StepFailure::new(e.to_string()))?;
    Ok(StepOutput::done(format!(
        "pg_dump -Fc {} -> {}",
        pg.database,
        file.display()
    )))
}
