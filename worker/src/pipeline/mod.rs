//! The deploy pipeline: forge → clone → build → test → snapshot → migrate → deploy →
//! healthy → cleanup. Each step is a function in `crate::steps`; this module
//! only sequences them and records what happened.

pub mod abort;
pub mod log;
pub mod record;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use norn_shared::db::apps::App;
use norn_shared::domain::{GitRef, Step, StepStatus};
use norn_shared::text::Masker;

use crate::WorkerError;
use crate::adapters::{Instance, Output};
use crate::state::WorkerState;
use crate::steps;
use abort::Abort;
use record::Recorder;
use tokio::sync::watch;

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
    /// Norn's own trouble (its database went away): the job is retried and
    /// the deployment resumed rather than failed.
    pub infra: bool,
}

impl StepFailure {
    pub fn new(reason: impl Into<String>) -> Self {
        Self::with_output(reason, String::new())
    }
    pub fn with_output(reason: impl Into<String>, output: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            output: output.into(),
            infra: false,
        }
    }
    pub fn infra(reason: impl Into<String>) -> Self {
        Self {
            infra: true,
            ..Self::new(reason)
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
    /// This attempt's lease token: part of every container name, so a stale
    /// attempt and its successor never touch each other's containers.
    pub token: i64,
    pub abort: watch::Receiver<Option<Abort>>,
    /// The dump the snapshot step took (restored if the migration fails).
    pub snapshot: Option<PathBuf>,
    /// Nothing of the failed migration stayed applied (the change runner's
    /// transaction undid it, or nothing ran): nothing to restore.
    pub migration_undone: bool,
    /// This attempt's number (`deployments.attempts`), for its step logs.
    pub attempt: i32,
    /// The running step's output (see `log.rs`).
    pub log: log::StepLog,
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

    /// Name of this attempt's one-off container for `job` (test, migrate).
    pub fn one_off_name(&self, job: &str) -> String {
        format!("{}-{job}-{}-{}", self.app.id, self.short_id(), self.token)
    }

    /// How long `step` may run: the app's `deployPolicy.timeouts`, else the
    /// global setting.
    pub fn deadline(&self, step: Step) -> Duration {
        let global = &self.state.config.step_timeouts;
        let app = &self.app.spec.deploy_policy.timeouts;
        match step {
            Step::Forge => FORGE_DEADLINE,
            Step::Clone => global.clone,
            Step::Build => app.build.unwrap_or(global.build),
            Step::Test => app.test.unwrap_or(global.test),
            Step::Snapshot => app.snapshot.unwrap_or(global.snapshot),
            Step::Migrate => app.migrate.unwrap_or(global.migrate),
            Step::Deploy => global.deploy,
            Step::Healthy => app.healthy.unwrap_or(global.healthy),
            Step::Cleanup => CLEANUP_DEADLINE,
        }
    }
}

const CLEANUP_DEADLINE: Duration = Duration::from_secs(120);
const FORGE_DEADLINE: Duration = Duration::from_secs(300);

pub const STEPS: [Step; 9] = Step::ALL;

async fn run_step(step: Step, ctx: &mut DeployCtx<'_>) -> Result<StepOutput, StepFailure> {
    match step {
        Step::Forge => steps::forge::run(ctx).await,
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

/// How one step ended.
enum Ended {
    Done(StepOutput),
    Failed(StepFailure),
    Aborted(Abort),
}

/// Runs `step` against its deadline and the abort signal. The healthy step
/// watches both itself (its gate has the deadline): once it has switched
/// traffic, stopping it halfway would leave the app without a release.
async fn run_bounded(step: Step, ctx: &mut DeployCtx<'_>) -> Ended {
    let interruptible = !matches!(step, Step::Healthy | Step::Cleanup);
    let limit = if step == Step::Healthy {
        // Gate deadline, then the drain-time probes and the retirement.
        ctx.deadline(step) + ctx.state.config.drain_grace + Duration::from_secs(120)
    } else {
        ctx.deadline(step)
    };
    let mut abort = ctx.abort.clone();
    let ended = tokio::select! {
        a = abort::raised(&mut abort), if interruptible => Ended::Aborted(a),
        r = tokio::time::timeout(limit, run_step(step, ctx)) => match r {
            Ok(Ok(out)) => Ended::Done(out),
            Ok(Err(f)) => Ended::Failed(f),
            Err(_) => Ended::Failed(StepFailure::new(format!(
                "timed out after {}",
                human(limit)
            ))),
        },
    };
    match (ended, abort::current(&ctx.abort)) {
        // The healthy step gave up because of an abort: report the abort.
        (Ended::Failed(_), Some(a)) => Ended::Aborted(a),
        (ended, _) => ended,
    }
}

pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Runs every step not in `done`, in order. A failed step fails the
/// deployment; the work directory and any half-started release are removed
/// either way. Returns [`WorkerError::Fenced`] when this worker lost the
/// lease: it then removes only what this attempt started and writes nothing.
pub async fn run(
    ctx: &mut DeployCtx<'_>,
    rec: &mut Recorder,
    done: &BTreeSet<Step>,
) -> Result<(), WorkerError> {
    let mut masker = None;
    let mut previous = None;
    for step in STEPS.into_iter().filter(|s| !done.contains(s)) {
        rec.step_started(step).await?;
        let began = Instant::now();
        // Read once per attempt, and again after the forge step, which
        // makes the database password.
        if masker.is_none() || previous == Some(Step::Forge) {
            masker = Some(load_masker(ctx, step).await?);
        }
        previous = Some(step);
        let masker = masker.clone().unwrap_or_default();
        ctx.log = log::StepLog::start(
            log::LogTarget {
                pool: ctx.state.pool.clone(),
                app: ctx.app.id.clone(),
                deployment_id: ctx.deployment_id.clone(),
                step,
                attempt: ctx.attempt,
                cap: ctx.state.config.step_log_max,
            },
            masker.clone(),
        );
        let ended = run_bounded(step, ctx).await;
        let took = began.elapsed();
        // What the step returned goes after what it streamed; the row keeps
        // the end of both.
        let mut step_log = std::mem::replace(&mut ctx.log, log::StepLog::detached());
        let returned = match &ended {
            Ended::Done(out) => out.output.as_str(),
            Ended::Failed(f) => f.output.as_str(),
            Ended::Aborted(_) => "",
        };
        step_log.write(returned).await;
        let tail = step_log.finish().await;
        let (reason, output) = match ended {
            Ended::Done(out) => {
                let status = if out.skipped {
                    StepStatus::Skipped
                } else {
                    StepStatus::Complete
                };
                let snapshot = ctx.snapshot.as_deref().and_then(|p| p.to_str());
                let found = match step {
                    Step::Clone => record::Found {
                        commit_sha: ctx.sha.as_deref(),
                        ..Default::default()
                    },
                    Step::Build => record::Found {
                        image_tag: ctx.image.as_deref(),
                        ..Default::default()
                    },
                    Step::Snapshot => record::Found {
                        snapshot,
                        ..Default::default()
                    },
                    _ => record::Found::default(),
                };
                rec.step_finished(step, status, &tail, took, found).await?;
                test_hook::after_step(step).await;
                continue;
            }
            Ended::Failed(f) if f.infra => {
                // Leave everything as it is: the retried job resumes here.
                return Err(WorkerError::Interrupted(format!("{step}: {}", f.reason)));
            }
            Ended::Failed(f) => (masker.mask(&f.reason), tail),
            Ended::Aborted(Abort::Canceled { by }) => (format!("canceled by {by}"), tail),
            Ended::Aborted(Abort::LeaseLost) => {
                steps::deploy::discard_attempt(ctx, step).await;
                return Err(WorkerError::Fenced);
            }
        };
        let (reason, output) = if step == Step::Migrate {
            let restored = steps::migrate::restore_after_failure(ctx).await;
            (
                format!("{reason}; {restored}"),
                format!("{output}\n{restored}"),
            )
        } else {
            (reason, output)
        };
        tracing::warn!(step = %step, reason = %reason, "deploy step failed");
        if step == Step::Healthy
            && let Err(e) = steps::healthy::take_back_traffic(ctx).await
        {
            // Traffic may still be on this attempt's instances: keep them.
            return Err(WorkerError::Interrupted(format!("{step}: {}", e.reason)));
        }
        steps::deploy::discard_attempt(ctx, step).await;
        steps::cleanup::remove_workdir(&ctx.workdir).await;
        // Fenced first: only the lease holder may touch other attempts' instances.
        rec.failed(step, &reason, &output, took).await?;
        steps::deploy::discard_deployment(ctx).await;
        return Ok(());
    }
    rec.deployed(ctx.image.as_deref().unwrap_or_default(), &ctx.app.spec)
        .await
}

/// What the step's output must not show: the app's secrets and database
/// password. Norn's own database trouble retries the job (never run a step
/// unmasked); without the key nothing secret can be injected either.
async fn load_masker(ctx: &DeployCtx<'_>, step: Step) -> Result<Masker, WorkerError> {
    match crate::services::masker(ctx.state, &ctx.app.id).await {
        Ok(m) => Ok(m),
        Err(crate::services::ServicesError::Db(e)) => Err(WorkerError::Interrupted(format!(
            "{step}: reading the app's secrets: {e}"
        ))),
        Err(_) => Ok(Masker::default()),
    }
}

/// Lets tests stop a worker between two steps: with
/// `NORN_TEST_PAUSE_AFTER_STEP=<step>` the worker never starts the step after
/// it (the test then kills the process). Unset in production.
mod test_hook {
    use norn_shared::domain::Step;

    pub async fn after_step(step: Step) {
        if std::env::var("NORN_TEST_PAUSE_AFTER_STEP").ok().as_deref() == Some(step.as_str()) {
            tracing::warn!(step = %step, "NORN_TEST_PAUSE_AFTER_STEP: pausing here");
            std::future::pending::<()>().await;
        }
    }
}
