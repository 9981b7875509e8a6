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
use norn_shared::domain::{ForgeStatus, ForgeStep, StepStatus};
use norn_shared::events::{self, Event};
use norn_shared::infraspec::InfraSpec;
use serde_json::{Value, json};
use sqlx::{Postgres, Transaction};

use crate::adapters::{DatabaseGrant, Output};
use crate::services::{self, POSTGRES};
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
        && current.resources["postgres"]["database"].as_str()
            == spec.services.postgres.as_ref().map(|p| p.database.as_str())
}

/// Whether the spec declares anything to forge.
pub fn declares_services(spec: &InfraSpec) -> bool {
    let s = &spec.services;
    s.postgres.is_some() || s.kv.is_some() || s.events.is_some()
}

struct Done {
    status: StepStatus,
    output: String,
    credential: Option<Credential>,
}

impl Done {
    fn skipped(why: impl Into<String>) -> Self {
        Self {
            status: StepStatus::Skipped,
            output: why.into(),
            credential: None,
        }
    }
}

impl Forge<'_> {
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

    /// Runs every step; `out` gets a line per step. Returns the resources.
    pub async fn run(&self, out: &mut dyn Output) -> Result<Value, ForgeError> {
        let previous = {
            let mut conn = self.state.pool.acquire().await?;
            forge::get(&mut conn, self.app).await?
        };
        // Busy while we hold the lease: its holder died mid-operation.
        let interrupted = previous.status.is_busy();
        let resuming = interrupted || previous.status == ForgeStatus::ForgeFailed;
        let mut resources = previous.resources.clone();
        if !resources.is_object() {
            resources = json!({});
        }
        let mut tx = self.fenced().await?;
        if interrupted {
            let error = "norn restarted during operation";
            forge::transition(&mut tx, self.app, ForgeStatus::ForgeFailed, Some(error)).await?;
        }
        forge::transition(&mut tx, self.app, ForgeStatus::Forging, None).await?;
        let message = if resuming {
            "forge resumed"
        } else {
            "forge started"
        };
        self.trail(&mut tx, "forge.start", None, message).await?;
        tx.commit().await?;

        let mut steps: Vec<Value> = Vec::new();
        for step in ForgeStep::ALL {
            let started = Instant::now();
            let finished_before = resuming
                && previous.steps.iter().any(|s| {
                    s["step"] == step.as_str() && s["status"] == json!(StepStatus::Complete)
                });
            let result = if finished_before {
                Ok(Done::skipped("done by an earlier forge"))
            } else {
                self.step(step, &mut resources).await
            };
            let took = started.elapsed().as_millis() as u64;
            match result {
                Ok(done) => {
                    out.write(&format!("{}: {}\n", step.as_str(), done.output))
                        .await;
                    steps.push(json!({"step": step.as_str(), "status": done.status,
                                      "durationMs": took, "output": done.output}));
                    let mut tx = self.fenced().await?;
                    if let Some(credential) = &done.credential {
                        credentials::put(&mut tx, self.app, step.as_str(), credential).await?;
                    }
                    forge::record(&mut tx, self.app, &steps, &resources).await?;
                    self.publish(&mut tx, "forge.step", steps.last()).await?;
                    tx.commit().await?;
                }
                Err(reason) => {
                    out.write(&format!("{}: FAILED: {reason}\n", step.as_str()))
                        .await;
                    steps.push(json!({"step": step.as_str(), "status": StepStatus::Failed,
                                      "durationMs": took, "output": reason}));
                    let error = format!("{}: {reason}", step.as_str());
                    let mut tx = self.fenced().await?;
                    forge::record(&mut tx, self.app, &steps, &resources).await?;
                    forge::transition(&mut tx, self.app, ForgeStatus::ForgeFailed, Some(&error))
                        .await?;
                    self.trail(&mut tx, "forge.failed", Some(step.as_str()), &error)
                        .await?;
                    let payload = json!({"step": step.as_str(), "error": error});
                    self.publish(&mut tx, "forge.failed", Some(&payload))
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
        forge::transition(&mut tx, self.app, ForgeStatus::Forged, None).await?;
        self.trail(&mut tx, "forge.complete", None, "forged")
            .await?;
        let payload = json!({"resources": resources});
        self.publish(&mut tx, "forge.completed", Some(&payload))
            .await?;
        tx.commit().await?;
        Ok(resources)
    }

    async fn publish(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        kind: &str,
        payload: Option<&Value>,
    ) -> Result<(), sqlx::Error> {
        let payload = payload.cloned().unwrap_or(Value::Null);
        events::publish(tx, &Event::new(kind, self.app, payload)).await
    }

    async fn step(&self, step: ForgeStep, resources: &mut Value) -> Result<Done, String> {
        let services = &self.spec.services;
        match step {
            ForgeStep::Postgres => match &services.postgres {
                None => Ok(Done::skipped("no services.postgres declared")),
                Some(pg) => self.postgres(&pg.database, resources).await,
            },
            // Not provisioned yet: said so in the step, never recorded as done.
            ForgeStep::Kv => Ok(Done::skipped(match services.kv {
                None => "no services.kv declared",
                Some(_) => {
                    "services.kv declared, but Norn does not provision KV yet: no REDIS_URL is injected"
                }
            })),
            ForgeStep::Events => Ok(Done::skipped(match services.events {
                None => "no services.events declared",
                Some(_) => {
                    "services.events declared, but no brokers are configured (NORN_EVENTS_BROKERS): no topics made"
                }
            })),
        }
    }

    /// The app's role (named after its database, which the server's
    /// `samerole` rule relies on) owning its database. The password is kept
    /// when the role already has one of Norn's, so running containers keep
    /// working; it is stored only sealed.
    async fn postgres(&self, database: &str, resources: &mut Value) -> Result<Done, String> {
        let key = self
            .state
            .config
            .secret_key
            .as_ref()
            .ok_or_else(|| norn_shared::crypto::CryptoError::NoKey.to_string())?;
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
        resources[POSTGRES] = json!({"database": database, "role": database});
        Ok(Done {
            status: StepStatus::Complete,
            output,
            credential: Some(Credential {
                username: database.to_owned(),
                sealed,
            }),
        })
    }
}
