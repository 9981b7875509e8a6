//! Job payloads: what goes into a queue. The worker has one file per job type
//! that gives each its `run`.

use serde::{Deserialize, Serialize};

/// Run the deploy pipeline for an already-recorded `queued` deployment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeployJob {
    pub deployment_id: String,
    pub app: String,
}

/// Run one cron tick. `scheduled_at` is the tick's key (with app and process).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CronJob {
    pub app: String,
    pub process: String,
    pub scheduled_at: chrono::DateTime<chrono::Utc>,
}

/// Probe one app's health path once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HealthJob {
    pub app: String,
}

/// Restore an app database from a snapshot (a recorded `snapshot_restores` row).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreJob {
    pub restore_id: String,
    pub app: String,
}

/// Forge or tear down an app's services (under the app lease).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ForgeJob {
    /// The request's id (saga id of its `forge.queued` event).
    pub id: String,
    pub app: String,
    pub action: ForgeAction,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ForgeAction {
    /// Provision what the spec declares; `force` tears a forged app down
    /// (keeping its data) and forges it again.
    Forge { force: bool },
    /// Reverse every step; `drop_data` also drops databases.
    #[serde(rename_all = "camelCase")]
    Teardown { drop_data: bool },
    /// A preview's end: its services with their data, its containers, its
    /// routes and the app itself.
    RemovePreview,
}

/// Run one function execution (a `queued` row that was given a slot).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionJob {
    pub execution_id: i64,
    pub app: String,
}

/// Run a change-runner operation requested through the API (a recorded
/// `change_runs` row) on the app's deployed commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChangesJob {
    pub run_id: String,
    pub app: String,
}
