//! Forges the app's services before anything uses them, when they are not
//! forged yet (or the spec now declares others). Runs under the deploy's own
//! lease token, so its writes are fenced like every other step's.

use norn_shared::db::forge as forge_db;

use crate::forge::{self, Forge};
use crate::pipeline::{DeployCtx, StepFailure, StepOutput};

pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let spec = ctx.app.spec.clone();
    if !forge::declares_services(&spec) {
        return Ok(StepOutput::skipped("no services declared"));
    }
    let current = {
        let mut conn = ctx.state.pool.acquire().await.map_err(infra)?;
        forge_db::get(&mut conn, &ctx.app.id)
            .await
            .map_err(|e| StepFailure::infra(e.to_string()))?
    };
    if forge::up_to_date(&current, &spec) {
        return Ok(StepOutput::skipped("services already forged"));
    }
    let forge = Forge {
        state: ctx.state,
        app: &ctx.app.id,
        spec: &spec,
        token: ctx.token,
        actor: &ctx.state.config.node_name,
    };
    match forge.run(&mut ctx.log).await {
        Ok(_) => Ok(StepOutput::done("")),
        Err(forge::ForgeError::Step { step, reason }) => {
            Err(StepFailure::new(format!("forging {step}: {reason}")))
        }
        Err(forge::ForgeError::Fenced) => {
            Err(StepFailure::new("the app lease passed to another worker"))
        }
        Err(e) => Err(StepFailure::infra(e.to_string())),
    }
}

fn infra(e: sqlx::Error) -> StepFailure {
    StepFailure::infra(e.to_string())
}
