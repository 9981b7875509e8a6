//! What `GET /api/health` answers: Norn's own dependencies, as the API sees
//! them. (An app's health checks are `db::health`.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `ok` when Postgres and every live worker's container engine are up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overall {
    Ok,
    Degraded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    Up,
    Down,
    /// Not checked: what it depends on is down.
    Unknown,
    /// Nothing configures it, so nothing needs it.
    NotConfigured,
}

/// One dependency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Dependency {
    pub status: ServiceStatus,
    /// Why it is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What it means, when not an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// Live workers reporting a container engine (`docker` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Workers whose engine is down (`docker` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<FailingEngine>,
}

impl Dependency {
    pub fn new(status: ServiceStatus) -> Self {
        Self {
            status,
            error: None,
            details: None,
            workers: None,
            failing: Vec::new(),
        }
    }

    pub fn down(error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            ..Self::new(ServiceStatus::Down)
        }
    }

    pub fn explained(status: ServiceStatus, details: impl Into<String>) -> Self {
        Self {
            details: Some(details.into()),
            ..Self::new(status)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailingEngine {
    pub node: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dependencies {
    pub postgres: Dependency,
    pub docker: Dependency,
    /// The server app databases live on, as the provisioning role.
    pub app_databases: Dependency,
    pub kv: Dependency,
    pub events: Dependency,
}

impl Dependencies {
    /// Each with its name, in a fixed order.
    pub fn named(&self) -> [(&'static str, &Dependency); 5] {
        [
            ("postgres", &self.postgres),
            ("docker", &self.docker),
            ("appDatabases", &self.app_databases),
            ("kv", &self.kv),
            ("events", &self.events),
        ]
    }
}

/// The whole answer. Without a valid token only `status` is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthReport {
    pub status: Overall,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Dependencies>,
    /// Jobs waiting or running, per queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<BTreeMap<String, i64>>,
}
