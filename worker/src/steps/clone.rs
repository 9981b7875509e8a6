use std::path::PathBuf;

use crate::adapters::FetchRequest;
use crate::pipeline::{DeployCtx, StepFailure, StepOutput};

pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let spec = &ctx.app.spec;
    let req = FetchRequest {
        repo_url: spec.repo.as_ref().map(|r| r.url.clone()),
        default_branch: spec.repo.as_ref().map(|r| r.branch.clone()),
        local_dir: ctx.app.source_dir.as_ref().map(PathBuf::from),
        git_ref: ctx.git_ref.clone(),
    };
    let dest = ctx.workdir.clone();
    if dest.exists() {
        // A re-run after a crash starts from a clean checkout.
        tokio::fs::remove_dir_all(&dest)
            .await
            .map_err(|e| StepFailure::new(format!("clearing {}: {e}", dest.display())))?;
    }
    let source = ctx.state.source.clone();
    let checkout = tokio::task::spawn_blocking(move || source.fetch(&req, &dest))
        .await
        .map_err(|e| StepFailure::new(format!("clone task: {e}")))?
        .map_err(|e| StepFailure::new(e.to_string()))?;
    ctx.sha = Some(checkout.sha);
    Ok(StepOutput::done(checkout.description))
}
