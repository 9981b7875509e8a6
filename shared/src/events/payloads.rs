//! Every live event's payload, one type per event: what `/ws` clients and
//! the CLI read is exactly what the publisher wrote.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::cron::RunStatus;
use crate::db::deployments::Deployment;
use crate::db::functions::Status as FuncStatus;
use crate::db::health::Check;
use crate::domain::{
    ForgeOperation, ForgeStatus, ForgeStep, ForgeStepEntry, ForgedResources, Step, StepEntry,
};

/// An event's kind and payload: the `type` and `payload` fields of every
/// message on `/ws`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", content = "payload")]
pub enum EventBody {
    /// A deployment (or rollback) was queued: its row as the API answers it.
    #[serde(rename = "deploy.queued")]
    DeployQueued(Box<Deployment>),
    /// A pipeline step started or ended.
    #[serde(rename = "deploy.step")]
    DeployStep(DeployStep),
    /// A batch of a running step's output.
    #[serde(rename = "deploy.log")]
    DeployLog(DeployLog),
    #[serde(rename = "deploy.completed")]
    DeployCompleted(DeployCompleted),
    #[serde(rename = "deploy.failed")]
    DeployFailed(DeployFailed),
    #[serde(rename = "forge.step")]
    ForgeStep(ForgeStepEntry),
    #[serde(rename = "forge.completed")]
    ForgeCompleted(ForgeCompleted),
    #[serde(rename = "forge.failed")]
    ForgeFailed(ForgeFailed),
    #[serde(rename = "cron.started")]
    CronStarted(CronStarted),
    #[serde(rename = "cron.skipped")]
    CronSkipped(CronSkipped),
    /// Ticks that never ran: no scheduler was up, or no worker took them in
    /// their grace period.
    #[serde(rename = "cron.missed")]
    CronMissed(CronMissed),
    #[serde(rename = "cron.completed")]
    CronCompleted(CronEnded),
    /// Failed, timed out, or replaced by the next tick.
    #[serde(rename = "cron.failed")]
    CronFailed(CronEnded),
    #[serde(rename = "func.started")]
    FuncStarted(FuncStarted),
    #[serde(rename = "func.completed")]
    FuncCompleted(FuncEnded),
    /// Failed, timed out or canceled.
    #[serde(rename = "func.failed")]
    FuncFailed(FuncEnded),
    #[serde(rename = "health.check")]
    HealthCheck(Check),
    #[serde(rename = "snapshot.restored")]
    SnapshotRestored(RestoreEnded),
    #[serde(rename = "snapshot.restore_failed")]
    SnapshotRestoreFailed(RestoreEnded),
    #[serde(rename = "preview.removed")]
    PreviewRemoved(PreviewRemoved),
    /// Sent by `/ws` itself (with an empty `app`) to a client that fell
    /// behind, just before it closes the socket: events were lost to it.
    #[serde(rename = "stream.lagged")]
    StreamLagged(Lagged),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lagged {
    /// Events the client missed.
    pub missed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployStep {
    pub deployment_id: String,
    #[serde(flatten)]
    pub entry: StepEntry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployLog {
    pub deployment_id: String,
    pub step: Step,
    pub attempt: i32,
    /// The batch's end, at most a few KiB.
    pub text: String,
    /// Bytes of the batch not in `text` (they are in the step log).
    pub not_sent: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployCompleted {
    pub deployment_id: String,
    pub image_tag: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployFailed {
    pub deployment_id: String,
    /// Absent when it ended between steps (canceled, superseded, recovery).
    #[serde(default)]
    pub step: Option<Step>,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ForgeCompleted {
    pub operation: ForgeOperation,
    pub status: ForgeStatus,
    /// Dropped (null) only when the event had to be cut to fit.
    #[serde(default)]
    pub resources: Option<ForgedResources>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ForgeFailed {
    /// Absent when recovery ended an operation whose worker died.
    #[serde(default)]
    pub operation: Option<ForgeOperation>,
    #[serde(default)]
    pub step: Option<ForgeStep>,
    pub error: String,
    /// The status the operation was stuck in (recovery only).
    #[serde(default)]
    pub was: Option<ForgeStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronStarted {
    pub execution_id: i64,
    pub process: String,
    pub scheduled_at: DateTime<Utc>,
    pub image_tag: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronSkipped {
    pub process: String,
    pub scheduled_at: DateTime<Utc>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronMissed {
    pub process: String,
    /// How many ticks, the first and the last of them.
    pub count: u64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronEnded {
    pub execution_id: i64,
    pub process: String,
    pub status: RunStatus,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub error: Option<String>,
    /// The output's end.
    #[serde(default)]
    pub output: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FuncStarted {
    pub execution_id: i64,
    pub process: String,
    pub node: String,
    #[serde(default)]
    pub image_tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FuncEnded {
    pub execution_id: i64,
    pub process: String,
    pub status: FuncStatus,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub duration_ms: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreEnded {
    pub restore_id: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PreviewRemoved {
    pub app: String,
    pub reason: String,
}
