//! The deploy pipeline: clone → build → test → snapshot → migrate → deploy →
//! healthy → cleanup. Each step is a function in `crate::steps`; this module
//! only sequences them and records what happened.

pub mod record;

use std::path::PathBuf;
use std::time::Instant;

use norn_shared::db::apps::App;
use norn_shared::domain::{GitRef, Step, StepStatus};

use crate::WorkerError;
use crate::adapters::Instance;
use crate::state::WorkerState;
use crate::steps;
use record::Recorder;

/// What a step produced.
#[derive(Debug, Default)]
pub struct StepOutput {
    pub output: String,
    pub skipped: bool,
}

impl StepOutput {
    pub fn done(output: impl Into<String>) -> Self {
        Self {
            output: output.into(),
            skipped: false,
        }
    }
    pub fn skipped(why: impl Into<String>) -> Self {
        Self {
            output: why.into(),
            skipped: true,
        }
    }
}

/// Why a step failed, and what it printed before it did.
#[derive(Debug)]
pub struct StepFailure {
    pub reason: String,
    pub output: String,
}

impl StepFailure {
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            output: String::new(),
        }
    }
    pub fn with_output(reason: impl Into<String>, output: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            output: output.into(),
        }
    }
}

/// A started instance of the new release.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub process: String,
    pub port: Option<u16>,
    pub instance: Instance,
}

/// Everything the steps share while one deployment runs.
pub struct DeployCtx<'a> {
    pub state: &'a WorkerState,
    pub app: App,
    pub deployment_id: String,
    pub git_ref: GitRef,
    pub workdir: PathBuf,
    pub sha: Option<String>,
    pub image: Option<String>,
    pub started: Vec<NewInstance>,
}

impl DeployCtx<'_> {
    pub fn sha12(&self) -> &str {
        let sha = self.sha.as_deref().unwrap_or("unknown");
        &sha[..12.min(sha.len())]
    }

    pub fn image(&self) -> Result<&str, StepFailure> {
        self.image
            .as_deref()
            .ok_or_else(|| StepFailure::new("no image was built"))
    }

    /// The deployment id, short enough for container names.
    pub fn short_id(&self) -> &str {
        let id = self.deployment_id.as_str();
        &id[id.len().saturating_sub(12)..]
    }
}

const STEPS: [Step; 8] = [
    Step::Clone,
    Step::Build,
    Step::Test,
    Step::Snapshot,
    Step::Migrate,
    Step::Deploy,
    Step::Healthy,
    Step::Cleanup,
];

async fn run_step(step: Step, ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    match step {
        Step::Clone => steps::clone::run(ctx).await,
        Step::Build => steps::build::run(ctx).await,
        Step::Test => steps::test::run(ctx).await,
        Step::Snapshot => steps::snapshot::run(ctx).await,
        Step::Migrate => steps::migrate::run(ctx).await,
        Step::Deploy => steps::deploy::run(ctx).await,
        Step::Healthy => steps::healthy::run(ctx).await,
        Step::Cleanup => steps::cleanup::run(ctx).await,
    }
}

/// Runs every step in order. A failed step fails the deployment; the work
/// directory and any half-started release are removed either way.
pub async fn run(ctx: &mut DeployCtx<'_>, rec: &mut Recorder) -> Result<(), WorkerError> {
    rec.started().await?;
    for step in STEPS {
        rec.step_started(step).await?;
        let began = Instant::now();
        let result = run_step(step, ctx).await;
        let took = began.elapsed();
        match result {
            Ok(out) => {
                let status = if out.skipped {
                    StepStatus::Skipped
                } else {
                    StepStatus::Complete
                };
                let found = match step {
                    Step::Clone => (ctx.sha.as_deref(), None),
                    Step::Build => (None, ctx.image.as_deref()),
                    _ => (None, None),
                };
                rec.step_finished(step, status, &out.output, took, found)
                    .await?;
            }
            Err(failure) => {
                tracing::warn!(step = %step, reason = %failure.reason, "deploy step failed");
                steps::deploy::discard_new(ctx).await;
                steps::cleanup::remove_workdir(&ctx.workdir).await;
                rec.failed(step, &failure.reason, &failure.output, took)
                    .await?;
                return Ok(());
            }
        }
    }
    rec.deployed(ctx.image.as_deref().unwrap_or_default(), &ctx.app.spec)
        .await
}
