use std::path::Path;

use norn_shared::db::deployments;

use crate::pipeline::{DeployCtx, StepFailure, StepOutput};

/// Best effort: a leftover directory is logged, never a failed deploy.
pub async fn remove_workdir(dir: &Path) {
    if let Err(e) = tokio::fs::remove_dir_all(dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove work directory");
    }
}

/// Retires every instance of the app that is not this deployment's (the
/// previous release, and anything an older interrupted deploy left), then
/// removes the work directory. Runs only after `healthy` is recorded, so
/// traffic never goes back to a release that is already gone.
pub async fn run(ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    let mut output = String::new();
    retire_previous(ctx, &mut output).await;
    prune_images(ctx, &mut output).await;
    remove_workdir(&ctx.workdir).await;
    output.push_str(&format!("removed {}", ctx.workdir.display()));
    Ok(StepOutput::done(output))
}

async fn retire_previous(ctx: &DeployCtx<'_>, output: &mut String) {
    let old: Vec<String> = match ctx.state.runtime.instances(&ctx.app.id).await {
        Ok(list) => list
            .into_iter()
            .filter(|(_, dep)| *dep != ctx.deployment_id)
            .map(|(name, _)| name)
            .collect(),
        Err(e) => {
            output.push_str(&format!("could not list previous instances: {e}\n"));
            return;
        }
    };
    for name in old {
        match ctx.state.runtime.remove(&name).await {
            Ok(()) => output.push_str(&format!("retired {name}\n")),
            Err(e) => output.push_str(&format!("could not retire {name}: {e}\n")),
        }
    }
}

/// Removes the app's images older than its newest `NORN_KEEP_IMAGES`
/// releases (this one counted) from this engine, so disk use stays bounded
/// however often an app deploys. Best effort, like the rest of cleanup.
async fn prune_images(ctx: &DeployCtx<'_>, output: &mut String) {
    let Some(current) = ctx.image.clone() else {
        return;
    };
    let keep = ctx.state.config.keep_images;
    let mut kept = match ctx.state.pool.acquire().await {
        Ok(mut conn) => {
            match deployments::release_images(&mut conn, &ctx.app.id, &current, keep - 1).await {
                Ok(tags) => tags,
                Err(e) => {
                    output.push_str(&format!("could not read the releases to keep: {e}\n"));
                    return;
                }
            }
        }
        Err(e) => {
            output.push_str(&format!("could not read the releases to keep: {e}\n"));
            return;
        }
    };
    kept.push(current);
    // With NORN_REGISTRY_URL releases are named `<registry>/<app>:<v>`; the
    // engine's `<app>:<v>` tag of a kept release is kept too.
    let kept: Vec<String> = kept
        .iter()
        .map(|t| t.rsplit('/').next().unwrap_or(t).to_owned())
        .collect();
    let images = match ctx.state.builder.images(&ctx.app.id).await {
        Ok(images) => images,
        Err(e) => {
            output.push_str(&format!("could not list the app's images: {e}\n"));
            return;
        }
    };
    for tag in images.into_iter().filter(|t| !kept.contains(t)) {
        match ctx.state.builder.remove_image(&tag).await {
            Ok(()) => output.push_str(&format!("removed image {tag}\n")),
            Err(e) => output.push_str(&format!("kept image {tag}: {e}\n")),
        }
    }
}
