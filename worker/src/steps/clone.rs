use std::path::{Path, PathBuf};

use norn_shared::db::apps::App;
use norn_shared::domain::GitRef;

use crate::adapters::{Checkout, FetchRequest};
use crate::pipeline::{DeployCtx, StepFailure, StepOutput};
use crate::state::WorkerState;

pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let git_ref = ctx.git_ref.clone();
    let checkout = fetch(ctx, git_ref).await?;
    ctx.sha = Some(checkout.sha);
    Ok(StepOutput::done(checkout.description))
}

/// Fetches the app's code at `git_ref` into a clean work directory.
pub async fn fetch(ctx: &DeployCtx<'_>, git_ref: GitRef) -> Result<Checkout, StepFailure> {
    checkout(ctx.state, &ctx.app, git_ref, &ctx.workdir)
        .await
        .map_err(StepFailure::new)
}

/// Fetches `app`'s code at `git_ref` into `dest`, emptied first (a re-run
/// after a crash starts from a clean checkout).
pub async fn checkout(
    state: &WorkerState,
    app: &App,
    git_ref: GitRef,
    dest: &Path,
) -> Result<Checkout, String> {
    let spec = &app.spec;
    let req = FetchRequest {
        repo_url: spec.repo.as_ref().map(|r| r.url.clone()),
        default_branch: spec.repo.as_ref().map(|r| r.branch.clone()),
        local_dir: app.source_dir.as_ref().map(PathBuf::from),
        git_ref,
    };
    if dest.exists() {
        tokio::fs::remove_dir_all(dest)
            .await
            .map_err(|e| format!("clearing {}: {e}", dest.display()))?;
    }
    if let Some(parent) = dest.parent() {
        private_dir(parent)
            .await
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let (source, dest) = (state.source.clone(), dest.to_owned());
    tokio::task::spawn_blocking(move || source.fetch(&req, &dest))
        .await
        .map_err(|e| format!("clone task: {e}"))?
        .map_err(|e| e.to_string())
}

/// Creates the checkouts directory readable by this user only: checkouts
/// hold other people's code and, during a build, its secrets.
async fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || builder.create(dir))
        .await
        .map_err(std::io::Error::other)?
}
