use crate::pipeline::{DeployCtx, StepFailure, StepOutput};

/// Dumps the app database before migrations; the dump is what a failed
/// migration is rolled back to.
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
    let login = crate::services::require_pg_login(ctx.state, &ctx.app.id, &pg.database)
        .await
        .map_err(|e| StepFailure::new(e.to_string()))?;
    let file = tools
        .dump(
            &pg.database,
            &login,
            ctx.sha12(),
            &ctx.state.config.snapshots_dir,
        )
        .await
        .map_err(|e| StepFailure::new(e.to_string()))?;
    let mut output = format!("pg_dump -Fc {} -> {}", pg.database, file.display());
    let keep = ctx.app.spec.snapshots.keep as usize;
    match norn_shared::snapshots::retain(&ctx.state.config.snapshots_dir, &pg.database, keep) {
        Ok(removed) if !removed.is_empty() => {
            output.push_str(&format!(
                "\nkept the newest {keep}; removed {}",
                removed.join(", ")
            ));
        }
        Ok(_) => {}
        Err(e) => output.push_str(&format!("\ncould not apply snapshots.keep: {e}")),
    }
    ctx.snapshot = Some(file);
    Ok(StepOutput::done(output))
}
