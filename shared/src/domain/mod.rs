//! Domain types: parsed once at the edge, trusted inside.

mod app_name;
mod cron;
mod duration;
mod forge;
mod git_ref;
mod status;
mod steps;

pub use app_name::AppName;
pub use cron::CronExpr;
pub use duration::parse_duration;
pub use forge::{
    ForgeStatus, ForgeStep, ForgedEndpoints, ForgedEvents, ForgedKv, ForgedPostgres,
    ForgedResources, IllegalForgeTransition,
};
pub use git_ref::GitRef;
pub use status::{DeploymentStatus, IllegalTransition, Step, StepStatus};
pub use steps::{DeploymentKind, ForgeOperation, ForgeStepEntry, StepEntry};

/// A deployment id: a UUIDv7, so ids sort by creation time.
pub fn new_deployment_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
