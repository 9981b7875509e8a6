use std::collections::BTreeMap;
use std::time::Duration;

use crate::adapters::OneOff;
use crate::pipeline::{DeployCtx, StepFailure, StepOutput};

const TEST_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let Some(command) = ctx.app.spec.build.test.clone() else {
        return Ok(StepOutput::skipped("no build.test command"));
    };
    let job = OneOff {
        name: format!("{}-test-{}", ctx.app.id, ctx.short_id()),
        image: ctx.image()?.to_owned(),
        command: command.clone(),
        env: ctx.app.spec.env.clone(),
        labels: BTreeMap::from([
            ("norn.app".into(), ctx.app.id.clone()),
            ("norn.deployment".into(), ctx.deployment_id.clone()),
            ("norn.job".into(), "test".into()),
        ]),
        limits: None,
        timeout: TEST_TIMEOUT,
    };
    let result = ctx
        .state
        .runtime
        .run_once(&job)
        .await
        .map_err(|e| StepFailure::new(format!("running {command:?}: {e}")))?;
    if result.exit_code != 0 {
        return Err(StepFailure::with_output(
            format!("{command:?} exited with {}", result.exit_code),
            result.output,
        ));
    }
    Ok(StepOutput::done(result.output))
}
