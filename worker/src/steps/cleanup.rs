use std::path::Path;

use crate::pipeline::{DeployCtx, StepFailure, StepOutput};

/// Best effort: a leftover directory is logged, never a failed deploy.
pub async fn remove_workdir(dir: &Path) {
    if let Err(e) = tokio::fs::remove_dir_all(dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove work directory");
    }
}

pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    remove_workdir(&ctx.workdir).await;
    Ok(StepOutput::done(format!(
        "removed {}",
        ctx.workdir.display()
    )))
}
