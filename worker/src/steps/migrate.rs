use norn_shared::domain::Step;
use std::collections::BTreeMap;

use crate::adapters::OneOff;
use crate::pipeline::{DeployCtx, StepFailure, StepOutput};

pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let Some(migrations) = ctx.app.spec.migrations.clone() else {
        return Ok(StepOutput::skipped("no migrations declared"));
    };
    // The infraspec guarantees a database whenever migrations are declared.
    if ctx.app.spec.services.postgres.is_none() {
        return Err(StepFailure::new(
            "migrations need services.postgres.database",
        ));
    }
    // The forge step made the database and the app's role; the migration
    // runs as that role, like the app.
    let env = crate::services::app_env(ctx.state, &ctx.app.id, &ctx.app.spec)
        .await
        .map_err(|e| StepFailure::new(e.to_string()))?;
    let job = OneOff {
        name: ctx.one_off_name("migrate"),
        image: ctx.image()?.to_owned(),
        command: migrations.command.clone(),
        env,
        labels: BTreeMap::from([
            ("norn.app".into(), ctx.app.id.clone()),
            ("norn.deployment".into(), ctx.deployment_id.clone()),
            ("norn.job".into(), "migrate".into()),
        ]),
        limits: None,
        timeout: ctx.deadline(Step::Migrate),
    };
    let runtime = ctx.state.runtime.clone();
    let exit_code = runtime
        .run_once(&job, &mut ctx.log)
        .await
        .map_err(|e| StepFailure::new(format!("running {:?}: {e}", migrations.command)))?;
    if exit_code != 0 {
        return Err(StepFailure::new(format!(
            "{:?} exited with {exit_code}",
            migrations.command
        )));
    }
    Ok(StepOutput::done(""))
}

/// After a failed migration: restores the dump the snapshot step took before
/// it (`deployPolicy.restoreOnFailedMigration`, default on). Returns what
/// happened, for the step log and the error.
pub async fn restore_after_failure(ctx: &DeployCtx<'_>) -> String {
    let Some(pg) = &ctx.app.spec.services.postgres else {
        return String::new();
    };
    if !ctx.app.spec.deploy_policy.restore_on_failed_migration {
        return "deployPolicy.restoreOnFailedMigration is off: the database was left as the migration left it".into();
    }
    let Some(file) = &ctx.snapshot else {
        return "no pre-migration snapshot (the database did not exist before this deploy): nothing restored".into();
    };
    let login = match crate::services::require_pg_login(ctx.state, &ctx.app.id, &pg.database).await
    {
        Ok(login) => login,
        Err(e) => return format!("restoring the pre-migration snapshot FAILED: {e}"),
    };
    match ctx.state.pg.restore(&pg.database, &login, file).await {
        Ok(done) => format!("database restored to its pre-migration snapshot: {done}"),
        Err(e) => format!(
            "restoring the pre-migration snapshot {} FAILED: {e}",
            file.display()
        ),
    }
}
