use norn_shared::domain::Step;
use std::collections::BTreeMap;

use crate::adapters::{OneOff, Output};
use crate::pipeline::{DeployCtx, StepFailure, StepOutput};

pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let Some(migrations) = ctx.app.spec.migrations.clone() else {
        return Ok(StepOutput::skipped("no migrations declared"));
    };
    // The infraspec guarantees a database whenever migrations are declared.
    let Some(pg) = ctx.app.spec.services.postgres.clone() else {
        return Err(StepFailure::new(
            "migrations need services.postgres.database",
        ));
    };
    let created = ctx
        .state
        .pg
        .ensure(&pg.database)
        .await
        .map_err(|e| StepFailure::new(e.to_string()))?;
    let mut env = ctx.app.spec.env.clone();
    env.insert(
        "DATABASE_URL".into(),
        ctx.state.pg.database_url(&pg.database),
    );
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
    if created {
        ctx.log
            .write(&format!("created database {}\n", pg.database))
            .await;
    }
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
    match ctx.state.pg.restore(&pg.database, file).await {
        Ok(done) => format!("database restored to its pre-migration snapshot: {done}"),
        Err(e) => format!(
            "restoring the pre-migration snapshot {} FAILED: {e}",
            file.display()
        ),
    }
}
