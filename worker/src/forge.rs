//! The forge: provisions an app's services (the seeds' `forge_states`), one
//! step per service, under the app lease. Every write passes the lease fence
//! (`lease::fenced`), like a deploy's. After a failure the next forge resumes:
//! steps the failed one finished are recorded `skipped`.

use std::time::Instant;

use norn_shared::crypto::random_password;
use norn_shared::db::credentials::{self, Credential};
use norn_shared::db::forge::{self, ForgeState};
use norn_shared::db::lease;
use norn_shared::db::saga::{self, NewSagaEvent};
use norn_shared::domain::{
    ForgeOperation, ForgeStatus, ForgeStep, ForgeStepEntry, ForgedEndpoints, ForgedEvents,
    ForgedKv, ForgedPostgres, ForgedResources, StepStatus,
};
use norn_shared::events::{self, Event, EventBody, ForgeCompleted, ForgeFailed};
use norn_shared::infraspec::InfraSpec;
use serde_json::json;
use sqlx::{Postgres, Transaction};

use crate::adapters::redis::user_name;
use crate::adapters::{DatabaseGrant, DatabaseRevoke, KvGrant, KvRevoke, Output};
use crate::services;
use crate::state::WorkerState;

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("the app lease passed to another worker")]
    Fenced,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    State(#[from] forge::ForgeDbError),
    #[error("{step}: {reason}")]
    Step { step: &'static str, reason: String },
}

/// One forge of one app, by the holder of lease `token`.
pub struct Forge<'a> {
    pub state: &'a WorkerState,
    pub app: &'a str,
    pub spec: &'a InfraSpec,
    pub token: i64,
    pub actor: &'a str,
}

/// Whether the app's forged resources already match what its spec declares.
pub fn up_to_date(current: &ForgeState, spec: &InfraSpec) -> bool {
    current.status == ForgeStatus::Forged
        && current
            .resources
            .postgres
            .as_ref()
            .map(|p| p.database.as_str())
            == spec.services.postgres.as_ref().map(|p| p.database.as_str())
        && current.resources.kv.as_ref().map(|k| k.namespace.as_str())
            == spec.services.kv.as_ref().map(|k| k.namespace.as_str())
        && forged_hostnames(&current.resources) == hostnames(spec)
        && forged_topics(&current.resources) == topics(&current.app, spec)
}

/// Whether the spec declares anything to forge.
pub fn declares_services(spec: &InfraSpec) -> bool {
    let s = &spec.services;
    s.postgres.is_some() || s.kv.is_some() || s.events.is_some() || !spec.endpoints.is_empty()
}

/// The broker topics the spec declares, under the app's prefix.
fn topics(app: &str, spec: &InfraSpec) -> Vec<String> {
    spec.services
        .events
        .iter()
        .flat_map(|e| &e.topics)
        .map(|t| norn_shared::brokers::topic_name(app, t))
        .collect()
}

/// The topics the last forge made sure of.
fn forged_topics(resources: &ForgedResources) -> Vec<String> {
    resources
        .events
        .as_ref()
        .map(|e| e.topics.clone())
        .unwrap_or_default()
}

fn hostnames(spec: &InfraSpec) -> Vec<String> {
    spec.endpoints.iter().map(|e| e.hostname.clone()).collect()
}

/// The hostnames the last forge routed through the tunnel.
fn forged_hostnames(resources: &ForgedResources) -> Vec<String> {
    resources
        .endpoints
        .as_ref()
        .map(|e| e.hostnames.clone())
        .unwrap_or_default()
}

/// What a step did to the app's stored credentials.
enum Credentials {
    Keep,
    Put(Credential),
    Delete,
}

struct Done {
    status: StepStatus,
    output: String,
    credentials: Credentials,
}

impl Done {
    /// A teardown step that reversed what the forge recorded (the caller
    /// has cleared it from the resources).
    fn undone(output: String, credentials: Credentials) -> Self {
        Self {
            status: StepStatus::Complete,
            output,
            credentials,
        }
    }

    fn skipped(why: impl Into<String>) -> Self {
        Self {
            status: StepStatus::Skipped,
            output: why.into(),
            credentials: Credentials::Keep,
        }
    }
}

/// Provisioning, or its reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Forge,
    /// Reverses each step; app data is dropped only with `drop_data`.
    Teardown {
        drop_data: bool,
    },
}

impl Operation {
    fn kind(self) -> ForgeOperation {
        match self {
            Self::Forge => ForgeOperation::Forge,
            Self::Teardown { .. } => ForgeOperation::Teardown,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Forge => "forge",
            Self::Teardown { .. } => "teardown",
        }
    }

    /// (while running, when done)
    fn statuses(self) -> (ForgeStatus, ForgeStatus) {
        match self {
            Self::Forge => (ForgeStatus::Forging, ForgeStatus::Forged),
            Self::Teardown { .. } => (ForgeStatus::TearingDown, ForgeStatus::Unforged),
        }
    }

    fn steps(self) -> Vec<ForgeStep> {
        let mut steps = ForgeStep::ALL.to_vec();
        if matches!(self, Self::Teardown { .. }) {
            steps.reverse();
        }
        steps
    }
}

impl Forge<'_> {
    /// The key service passwords are sealed with; a forge cannot go on without.
    fn sealing_key(&self) -> Result<&norn_shared::crypto::SecretKey, String> {
        self.state
            .config
            .secret_key
            .as_ref()
            .ok_or_else(|| norn_shared::crypto::CryptoError::NoKey.to_string())
    }

    async fn fenced(&self) -> Result<Transaction<'static, Postgres>, ForgeError> {
        lease::fenced(&self.state.pool, self.app, self.token)
            .await?
            .ok_or(ForgeError::Fenced)
    }

    async fn trail(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        action: &str,
        step: Option<&str>,
        message: &str,
    ) -> Result<(), sqlx::Error> {
        saga::append(
            tx,
            NewSagaEvent {
                saga_id: &format!("forge:{}", self.app),
                app: self.app,
                category: "forge",
                action,
                step,
                message,
                actor: self.actor,
                metadata: json!({}),
            },
        )
        .await
    }

    /// Forges every service the spec declares; `out` gets a line per step.
    /// Returns the resources.
    pub async fn run(&self, out: &mut dyn Output) -> Result<ForgedResources, ForgeError> {
        self.operate(Operation::Forge, out).await
    }

    /// Runs `op`'s steps in order, persisting steps and resources after each
    /// (fenced), and the outcome. An operation whose holder died (the status
    /// still says it runs, but this worker holds the lease now) is recorded
    /// failed first; a forge after a failed one skips the steps it finished.
    pub async fn operate(
        &self,
        op: Operation,
        out: &mut dyn Output,
    ) -> Result<ForgedResources, ForgeError> {
        let previous = {
            let mut conn = self.state.pool.acquire().await?;
            forge::get(&mut conn, self.app).await?
        };
        let interrupted = previous.status.is_busy();
        let resuming =
            op == Operation::Forge && (interrupted || previous.status == ForgeStatus::ForgeFailed);
        let mut resources = previous.resources.clone();
        let (running, done_status) = op.statuses();
        let mut tx = self.fenced().await?;
        if interrupted {
            let error = "norn restarted during operation";
            forge::transition(&mut tx, self.app, ForgeStatus::ForgeFailed, Some(error)).await?;
        }
        forge::transition(&mut tx, self.app, running, None).await?;
        let message = match (op, resuming) {
            (Operation::Forge, true) => "forge resumed".to_owned(),
            (op, _) => format!("{} started", op.name()),
        };
        self.trail(&mut tx, &format!("{}.start", op.name()), None, &message)
            .await?;
        tx.commit().await?;

        let mut steps: Vec<ForgeStepEntry> = Vec::new();
        for step in op.steps() {
            let started = Instant::now();
            let finished_before = resuming
                && previous
                    .steps
                    .iter()
                    .any(|s| s.step == step && s.status == StepStatus::Complete);
            let result = if finished_before {
                Ok(Done::skipped("done by an earlier forge"))
            } else if let Err(injected) = test_hook::fail_at(op, step) {
                Err(injected)
            } else {
                self.step(op, step, &mut resources).await
            };
            let took = started.elapsed().as_millis() as u64;
            let entry = |status: StepStatus, output: &str| ForgeStepEntry {
                step,
                status,
                duration_ms: took,
                output: output.to_owned(),
                operation: op.kind(),
            };
            match result {
                Ok(done) => {
                    out.write(&format!("{}: {}\n", step.as_str(), done.output))
                        .await;
                    steps.push(entry(done.status, &done.output));
                    let mut tx = self.fenced().await?;
                    match &done.credentials {
                        Credentials::Keep => {}
                        Credentials::Put(c) => {
                            credentials::put(&mut tx, self.app, step.as_str(), c).await?
                        }
                        Credentials::Delete => {
                            credentials::delete(&mut tx, self.app, step.as_str()).await?
                        }
                    }
                    forge::record(&mut tx, self.app, &steps, &resources).await?;
                    if let Some(last) = steps.last() {
                        self.publish(&mut tx, EventBody::ForgeStep(last.clone()))
                            .await?;
                    }
                    tx.commit().await?;
                }
                Err(reason) => {
                    out.write(&format!("{}: FAILED: {reason}\n", step.as_str()))
                        .await;
                    steps.push(entry(StepStatus::Failed, &reason));
                    let error = format!("{}: {reason}", step.as_str());
                    let mut tx = self.fenced().await?;
                    forge::record(&mut tx, self.app, &steps, &resources).await?;
                    forge::transition(&mut tx, self.app, ForgeStatus::ForgeFailed, Some(&error))
                        .await?;
                    self.trail(&mut tx, "forge.failed", Some(step.as_str()), &error)
                        .await?;
                    let failed = ForgeFailed {
                        operation: Some(op.kind()),
                        step: Some(step),
                        error: error.clone(),
                        was: None,
                    };
                    self.publish(&mut tx, EventBody::ForgeFailed(failed))
                        .await?;
                    tx.commit().await?;
                    return Err(ForgeError::Step {
                        step: step.as_str(),
                        reason,
                    });
                }
            }
        }
        let mut tx = self.fenced().await?;
        forge::transition(&mut tx, self.app, done_status, None).await?;
        let action = format!("{}.complete", op.name());
        self.trail(&mut tx, &action, None, done_status.as_str())
            .await?;
        let completed = ForgeCompleted {
            operation: op.kind(),
            status: done_status,
            resources: Some(resources.clone()),
        };
        self.publish(&mut tx, EventBody::ForgeCompleted(completed))
            .await?;
        tx.commit().await?;
        Ok(resources)
    }

    async fn publish(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        body: EventBody,
    ) -> Result<(), sqlx::Error> {
        events::publish(tx, &Event::new(self.app, body)).await
    }

    async fn step(
        &self,
        op: Operation,
        step: ForgeStep,
        resources: &mut ForgedResources,
    ) -> Result<Done, String> {
        let services = &self.spec.services;
        match (op, step) {
            (Operation::Forge, ForgeStep::Postgres) => match &services.postgres {
                None => Ok(Done::skipped("no services.postgres declared")),
                Some(pg) => self.postgres(&pg.database, resources).await,
            },
            (Operation::Teardown { drop_data }, ForgeStep::Postgres) => {
                self.postgres_teardown(drop_data, resources).await
            }
            (Operation::Forge, ForgeStep::Kv) => match &services.kv {
                None => Ok(Done::skipped("no services.kv declared")),
                Some(kv) => self.kv(&kv.namespace, resources).await,
            },
            (Operation::Teardown { drop_data }, ForgeStep::Kv) => {
                self.kv_teardown(drop_data, resources).await
            }
            (Operation::Forge, ForgeStep::Events) => self.events(resources).await,
            (Operation::Forge, ForgeStep::Endpoints) => self.endpoints(resources).await,
            (Operation::Teardown { .. }, ForgeStep::Endpoints) => {
                self.endpoints_teardown(resources).await
            }
            (Operation::Teardown { drop_data }, ForgeStep::Events) => {
                self.events_teardown(drop_data, resources).await
            }
        }
    }

    /// The reverse of [`Self::postgres`]: the role may no longer log in and
    /// its connections end; with `drop_data` the database and the role go.
    async fn postgres_teardown(
        &self,
        drop_data: bool,
        resources: &mut ForgedResources,
    ) -> Result<Done, String> {
        let Some(forged) = resources.postgres.clone() else {
            return Ok(Done::skipped("no database was forged"));
        };
        let database = forged.database;
        let role = forged.role.unwrap_or_else(|| database.clone());
        let output = self
            .state
            .provisioner
            .revoke_database(&DatabaseRevoke {
                app: self.app,
                database: &database,
                role: &role,
                drop_data,
            })
            .await
            .map_err(|e| e.to_string())?;
        resources.postgres = None;
        Ok(Done::undone(output, Credentials::Delete))
    }

    /// The app's role (named after its database, which the server's
    /// `samerole` rule relies on) owning its database. The password is kept
    /// when the role already has one of Norn's, so running containers keep
    /// working; it is stored only sealed.
    async fn postgres(
        &self,
        database: &str,
        resources: &mut ForgedResources,
    ) -> Result<Done, String> {
        let key = self.sealing_key()?;
        let existing = services::pg_login(self.state, self.app)
            .await
            .map_err(|e| e.to_string())?
            .filter(|login| login.role == database);
        let password = existing.map(|l| l.password).unwrap_or_else(random_password);
        let output = self
            .state
            .provisioner
            .database(&DatabaseGrant {
                app: self.app,
                database,
                role: database,
                password: &password,
            })
            .await
            .map_err(|e| e.to_string())?;
        let sealed = key.seal(&password).map_err(|e| e.to_string())?;
        resources.postgres = Some(ForgedPostgres {
            database: database.to_owned(),
            role: Some(database.to_owned()),
        });
        Ok(Done {
            status: StepStatus::Complete,
            output,
            credentials: Credentials::Put(Credential {
                username: database.to_owned(),
                sealed,
            }),
        })
    }
}

impl Forge<'_> {
    /// The app's key-value user, named after its namespace and limited to
    /// it. Like the database role, the password is kept across forges.
    async fn kv(&self, namespace: &str, resources: &mut ForgedResources) -> Result<Done, String> {
        let kv = self.state.kv.as_ref().ok_or(
            "services.kv declared, but no key-value server is configured: set NORN_KV_URL \
             (norn up starts one when redis-server is installed)",
        )?;
        let key = self.sealing_key()?;
        let user = user_name(namespace);
        let existing = services::kv_login(self.state, self.app)
            .await
            .map_err(|e| e.to_string())?
            .filter(|(u, _)| *u == user);
        let password = existing.map(|(_, p)| p).unwrap_or_else(random_password);
        let output = kv
            .namespace(&KvGrant {
                app: self.app,
                namespace,
                user: &user,
                password: &password,
            })
            .await
            .map_err(|e| e.to_string())?;
        let sealed = key.seal(&password).map_err(|e| e.to_string())?;
        resources.kv = Some(ForgedKv {
            namespace: namespace.to_owned(),
            user: Some(user.clone()),
        });
        Ok(Done {
            status: StepStatus::Complete,
            output,
            credentials: Credentials::Put(Credential {
                username: user,
                sealed,
            }),
        })
    }

    /// The reverse of [`Self::kv`]: the user goes; with `drop_data`, the keys.
    async fn kv_teardown(
        &self,
        drop_data: bool,
        resources: &mut ForgedResources,
    ) -> Result<Done, String> {
        let Some(forged) = resources.kv.clone() else {
            return Ok(Done::skipped("no key-value namespace was forged"));
        };
        let namespace = forged.namespace;
        let kv = self.state.kv.as_ref().ok_or(
            "a key-value namespace was forged, but no key-value server is configured now \
             (NORN_KV_URL): its user cannot be removed",
        )?;
        let user = forged.user.unwrap_or_else(|| user_name(&namespace));
        let output = kv
            .revoke_namespace(&KvRevoke {
                app: self.app,
                namespace: &namespace,
                user: &user,
                drop_data,
            })
            .await
            .map_err(|e| e.to_string())?;
        resources.kv = None;
        Ok(Done::undone(output, Credentials::Delete))
    }
}

impl Forge<'_> {
    /// The app's topics, each under its prefix. Topics an earlier forge made
    /// that the spec no longer lists are kept (they hold data) and said so.
    async fn events(&self, resources: &mut ForgedResources) -> Result<Done, String> {
        let wanted = topics(self.app, self.spec);
        if self.spec.services.events.is_none() {
            return Ok(Done::skipped("no services.events declared"));
        }
        let Some(brokers) = &self.state.topics else {
            return Ok(Done::skipped(
                "services.events declared, but no brokers are configured (NORN_EVENTS_BROKERS): no topics made",
            ));
        };
        let mut output = brokers.topics(&wanted).await.map_err(|e| e.to_string())?;
        let dropped: Vec<String> = forged_topics(resources)
            .into_iter()
            .filter(|t| !wanted.contains(t))
            .collect();
        if !dropped.is_empty() {
            output.push_str(&format!(
                "\nno longer declared, kept with their data: {}",
                dropped.join(", ")
            ));
        }
        resources.events = Some(ForgedEvents { topics: wanted });
        Ok(Done {
            status: StepStatus::Complete,
            output,
            credentials: Credentials::Keep,
        })
    }

    /// The reverse of [`Self::events`]: topics hold the app's data, so they
    /// are deleted only with `drop_data`.
    async fn events_teardown(
        &self,
        drop_data: bool,
        resources: &mut ForgedResources,
    ) -> Result<Done, String> {
        let made = forged_topics(resources);
        if made.is_empty() {
            return Ok(Done::skipped("no topics were made"));
        }
        let output = if drop_data {
            let brokers = self.state.topics.as_ref().ok_or(
                "topics were made, but no brokers are configured now (NORN_EVENTS_BROKERS): they cannot be deleted",
            )?;
            brokers
                .delete_topics(&made)
                .await
                .map_err(|e| e.to_string())?
        } else {
            format!(
                "kept with their data (dropData not set): {}",
                made.join(", ")
            )
        };
        resources.events = None;
        Ok(Done::undone(output, Credentials::Keep))
    }

    /// Norn's ingress routes the declared hostnames by itself (claimed at
    /// registration); this step adds the tunnel's rules when Norn keeps one.
    async fn endpoints(&self, resources: &mut ForgedResources) -> Result<Done, String> {
        let wanted = hostnames(self.spec);
        let previous = forged_hostnames(resources);
        if wanted.is_empty() && previous.is_empty() {
            return Ok(Done::skipped("no endpoints declared"));
        }
        let Some(tunnel) = &self.state.tunnel else {
            return Ok(Done::skipped(
                "Norn's ingress routes the endpoints; NORN_CLOUDFLARED_CONFIG is unset, so no tunnel rules were written",
            ));
        };
        let output = tunnel
            .route(&wanted, &previous)
            .await
            .map_err(|e| e.to_string())?;
        resources.endpoints = Some(ForgedEndpoints { hostnames: wanted });
        Ok(Done {
            status: StepStatus::Complete,
            output,
            credentials: Credentials::Keep,
        })
    }

    async fn endpoints_teardown(&self, resources: &mut ForgedResources) -> Result<Done, String> {
        let routed = forged_hostnames(resources);
        if routed.is_empty() {
            return Ok(Done::skipped("no tunnel rules were written"));
        }
        let tunnel = self.state.tunnel.as_ref().ok_or(
            "tunnel rules were written, but NORN_CLOUDFLARED_CONFIG is unset now: they cannot be removed",
        )?;
        let output = tunnel.unroute(&routed).await.map_err(|e| e.to_string())?;
        resources.endpoints = None;
        Ok(Done::undone(output, Credentials::Keep))
    }
}

/// Lets tests fail a forge at a step: with `NORN_TEST_FAIL_FORGE_STEP=<step>`
/// (`postgres`, `kv`, `events`, `endpoints`) that step of a forge fails before it runs.
/// Unset in production.
mod test_hook {
    use norn_shared::domain::ForgeStep;

    use super::Operation;

    pub fn fail_at(op: Operation, step: ForgeStep) -> Result<(), String> {
        let wanted = std::env::var("NORN_TEST_FAIL_FORGE_STEP").ok();
        if op == Operation::Forge && wanted.as_deref() == Some(step.as_str()) {
            return Err("failure injected by NORN_TEST_FAIL_FORGE_STEP".into());
        }
        Ok(())
    }
}
