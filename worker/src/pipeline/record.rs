//! Persists every step transition: the deployment row (status + steps JSONB),
//! a saga event and a live event, all in one transaction. Every transaction
//! first passes the lease fence, so a worker that lost the app lease writes
//! nothing ([`WorkerError::Fenced`]).

use std::time::Duration;

use norn_shared::db::deployments::{self, Update};
use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::db::{cron, lease};
use norn_shared::domain::{DeploymentKind, DeploymentStatus, Step, StepEntry, StepStatus};
use norn_shared::events::{self, DeployCompleted, DeployFailed, DeployStep, Event, EventBody};
use norn_shared::infraspec::InfraSpec;
use serde_json::json;
use sqlx::{PgPool, Postgres, Transaction};

use crate::WorkerError;

/// What a finished step learnt that the deployment row keeps.
#[derive(Debug, Default, Clone, Copy)]
pub struct Found<'a> {
    pub commit_sha: Option<&'a str>,
    pub image_tag: Option<&'a str>,
    /// The dump a snapshot step took.
    pub snapshot: Option<&'a str>,
}

pub struct Recorder {
    pool: PgPool,
    pub deployment_id: String,
    pub app: String,
    actor: String,
    token: i64,
    steps: Vec<StepEntry>,
}

impl Recorder {
    /// `steps` are the entries earlier attempts completed (empty on a first run).
    pub fn new(
        pool: PgPool,
        deployment_id: &str,
        app: &str,
        actor: &str,
        token: i64,
        steps: Vec<StepEntry>,
    ) -> Self {
        Self {
            pool,
            deployment_id: deployment_id.to_owned(),
            app: app.to_owned(),
            actor: actor.to_owned(),
            token,
            steps,
        }
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, WorkerError> {
        lease::fenced(&self.pool, &self.app, self.token)
            .await?
            .ok_or(WorkerError::Fenced)
    }

    fn saga<'a>(
        &'a self,
        action: &'a str,
        step: Option<&'a str>,
        message: &'a str,
        metadata: serde_json::Value,
    ) -> NewSagaEvent<'a> {
        NewSagaEvent {
            saga_id: &self.deployment_id,
            app: &self.app,
            category: "deploy",
            action,
            step,
            message,
            actor: &self.actor,
            metadata,
        }
    }

    /// Records the start of the whole operation (after the app lease is held),
    /// or, for a later attempt, where it resumes.
    pub async fn started(&self, attempt: i32, resume_at: Option<Step>) -> Result<(), WorkerError> {
        let mut tx = self.begin().await?;
        let event = match resume_at {
            None => self.saga("deploy.start", None, "deploy started", json!({})),
            Some(step) => NewSagaEvent {
                actor: "recovery",
                ..self.saga(
                    "deploy.resumed",
                    Some(step.as_str()),
                    "resumed after the previous worker stopped",
                    json!({"attempt": attempt}),
                )
            },
        };
        saga::append(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends the deployment before (or between) steps, e.g. after too many
    /// interrupted attempts or a cancel that arrived while it waited.
    pub async fn ended(&self, reason: &str, actor: &str) -> Result<(), WorkerError> {
        let mut tx = self.begin().await?;
        let (id, app) = (&self.deployment_id, &self.app);
        deployments::fail_with_trail(&mut tx, id, app, reason, "deploy.failed", actor).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn step_started(&mut self, step: Step) -> Result<(), WorkerError> {
        // In pipeline order, whatever earlier attempts (or a rollback's
        // skipped build steps) recorded already.
        let at = self
            .steps
            .iter()
            .position(|e| e.step > step)
            .unwrap_or(self.steps.len());
        self.steps.insert(at, StepEntry::running(step));
        let mut tx = self.begin().await?;
        deployments::update(
            &mut tx,
            &self.deployment_id,
            &Update {
                status: Some(step.status()),
                steps: Some(&self.steps),
                ..Default::default()
            },
        )
        .await?;
        saga::append(
            &mut tx,
            self.saga("step.start", Some(step.as_str()), "", json!({})),
        )
        .await?;
        events::publish(&mut tx, &self.step_event(StepEntry::running(step))).await?;
        tx.commit().await?;
        Ok(())
    }

    fn step_event(&self, entry: StepEntry) -> Event {
        Event::new(
            &self.app,
            EventBody::DeployStep(DeployStep {
                deployment_id: self.deployment_id.clone(),
                entry,
            }),
        )
    }

    /// Ends `entry`'s step in the row's list (replacing its `running` entry).
    fn close_step(&mut self, entry: StepEntry) -> StepEntry {
        match self.steps.iter_mut().rev().find(|e| e.step == entry.step) {
            Some(found) => *found = entry.clone(),
            None => self.steps.push(entry.clone()),
        }
        entry
    }

    /// Records a finished step; `commit_sha`/`image_tag` are set once known,
    /// `snapshot` once the snapshot step took its dump.
    pub async fn step_finished(
        &mut self,
        step: Step,
        status: StepStatus,
        output: &str,
        took: Duration,
        found: Found<'_>,
    ) -> Result<(), WorkerError> {
        let mut entry = StepEntry::ended(step, status, output, took.as_millis() as u64);
        entry.snapshot = found.snapshot.map(str::to_owned);
        let entry = self.close_step(entry);
        let mut tx = self.begin().await?;
        deployments::update(
            &mut tx,
            &self.deployment_id,
            &Update {
                steps: Some(&self.steps),
                commit_sha: found.commit_sha,
                image_tag: found.image_tag,
                ..Default::default()
            },
        )
        .await?;
        let action = if status == StepStatus::Skipped {
            "step.skipped"
        } else {
            "step.complete"
        };
        saga::append(
            &mut tx,
            self.saga(
                action,
                Some(step.as_str()),
                events::tail(output, 500),
                json!({"durationMs": took.as_millis() as u64}),
            ),
        )
        .await?;
        events::publish(&mut tx, &self.step_event(entry)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Fails the deployment at `step` with `reason`, keeping the step's output.
    pub async fn failed(
        &mut self,
        step: Step,
        reason: &str,
        output: &str,
        took: Duration,
    ) -> Result<(), WorkerError> {
        let entry = StepEntry::ended(step, StepStatus::Failed, output, took.as_millis() as u64);
        let entry = self.close_step(entry);
        let error = format!("{step}: {reason}");
        let mut tx = self.begin().await?;
        deployments::update(
            &mut tx,
            &self.deployment_id,
            &Update {
                status: Some(DeploymentStatus::Failed),
                steps: Some(&self.steps),
                error: Some(&error),
                failed_step: Some(step.as_str()),
                ..Default::default()
            },
        )
        .await?;
        saga::append(
            &mut tx,
            self.saga("step.failed", Some(step.as_str()), reason, json!({})),
        )
        .await?;
        saga::append(
            &mut tx,
            self.saga("deploy.failed", Some(step.as_str()), &error, json!({})),
        )
        .await?;
        events::publish(&mut tx, &self.step_event(entry)).await?;
        let failed = EventBody::DeployFailed(DeployFailed {
            deployment_id: self.deployment_id.clone(),
            step: Some(step),
            error,
        });
        events::publish(&mut tx, &Event::new(&self.app, failed)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The deployment is live. A rollback also marks the release it replaced
    /// `rolled_back`, in the same transaction.
    pub async fn deployed(&self, image_tag: &str, spec: &InfraSpec) -> Result<(), WorkerError> {
        let mut tx = self.begin().await?;
        let this = deployments::get(&mut tx, &self.deployment_id).await?;
        if this
            .as_ref()
            .is_some_and(|d| d.kind == DeploymentKind::Rollback)
            && let Some(replaced) = deployments::current(&mut tx, &self.app).await?
            && replaced.id != self.deployment_id
        {
            deployments::update(
                &mut tx,
                &replaced.id,
                &Update {
                    status: Some(DeploymentStatus::RolledBack),
                    ..Default::default()
                },
            )
            .await?;
            let message = format!("replaced by rollback {}", self.deployment_id);
            saga::append(
                &mut tx,
                NewSagaEvent {
                    saga_id: &replaced.id,
                    ..self.saga("deploy.rolled_back", None, &message, json!({}))
                },
            )
            .await?;
        }
        // A cron app runs the new image from its next tick on.
        cron::sync_from_deploy(&mut tx, spec, image_tag).await?;
        deployments::update(
            &mut tx,
            &self.deployment_id,
            &Update {
                status: Some(DeploymentStatus::Deployed),
                ..Default::default()
            },
        )
        .await?;
        saga::append(
            &mut tx,
            self.saga(
                "deploy.complete",
                None,
                image_tag,
                json!({"imageTag": image_tag}),
            ),
        )
        .await?;
        let completed = EventBody::DeployCompleted(DeployCompleted {
            deployment_id: self.deployment_id.clone(),
            image_tag: image_tag.to_owned(),
        });
        events::publish(&mut tx, &Event::new(&self.app, completed)).await?;
        tx.commit().await?;
        Ok(())
    }
}
