use norn_shared::domain::Step;
use std::collections::BTreeMap;

use crate::adapters::OneOff;
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
    let result = ctx
        .state
        .runtime
        .run_once(&job)
        .await
        .map_err(|e| StepFailure::new(format!("running {:?}: {e}", migrations.command)))?;
    let mut output = String::new();
    if created {
        output.push_str(&format!("created database {}\n", pg.database));
    }
    output.push_str(&result.output);
    if result.exit_code != 0 {
        return Err(StepFailure::with_output(
            format!("{:?} exited with {}", migrations.command, result.exit_code),
            output,
        ));
    }
    Ok(StepOutput::done(output))
}
