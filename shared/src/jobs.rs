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
