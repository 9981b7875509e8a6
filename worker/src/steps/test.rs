use norn_shared::domain::Step;
use std::collections::BTreeMap;

use crate::adapters::OneOff;
use crate::pipeline::{DeployCtx, StepFailure, StepOutput};

pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let Some(command) = ctx.app.spec.build.test.clone() else {
        return Ok(StepOutput::skipped("no build.test command"));
    };
    let env = crate::services::app_env(ctx.state, &ctx.app.id, &ctx.app.spec)
        .await
        .map_err(|e| StepFailure::new(e.to_string()))?;
    let job = OneOff {
        name: ctx.one_off_name("test"),
        image: ctx.image()?.to_owned(),
        command: command.clone(),
        env,
        labels: BTreeMap::from([
            ("norn.app".into(), ctx.app.id.clone()),
            ("norn.deployment".into(), ctx.deployment_id.clone()),
            ("norn.job".into(), "test".into()),
        ]),
        limits: None,
        timeout: ctx.deadline(Step::Test),
    };
    let runtime = ctx.state.runtime.clone();
    let exit_code = runtime
        .run_once(&job, &mut ctx.log)
        .await
        .map_err(|e| StepFailure::new(format!("running {command:?}: {e}")))?;
    if exit_code != 0 {
        return Err(StepFailure::new(format!(
            "{command:?} exited with {exit_code}"
        )));
    }
    Ok(StepOutput::done(""))
}
