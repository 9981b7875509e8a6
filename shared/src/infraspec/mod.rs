//! `infraspec.yaml`: parsed into typed, validated domain types. Every error
//! names the field path it is about.

mod cron;
pub mod document;
pub mod endpoints;
pub mod limits;
mod policy;
pub mod previews;
pub mod raw;
mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::AppName;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// All problems found in one spec, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct SpecErrors(pub Vec<FieldError>);

impl SpecErrors {
    pub fn first(&self) -> &FieldError {
        &self.0[0]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InfraSpec {
    #[schema(value_type = String)]
    pub name: AppName,
    pub repo: Option<Repo>,
    pub build: Build,
    pub processes: BTreeMap<String, Process>,
    pub services: Services,
    pub migrations: Option<Migrations>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub deploy_policy: DeployPolicy,
    pub snapshots: Snapshots,
    /// Public hostnames routed to the app (one app per hostname).
    pub endpoints: Vec<Endpoint>,
    /// `previews`, when enabled: pull requests deployed as apps of their own.
    pub previews: Option<Previews>,
}

/// `snapshots`: how many pre-migration dumps of the app database to keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshots {
    pub keep: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Repo {
    pub url: String,
    pub branch: String,
    pub auto_deploy: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    pub dockerfile: String,
    pub test: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub port: Option<u16>,
    pub command: Option<String>,
    pub health: Option<Health>,
    pub replicas: u32,
    pub schedule: Option<Schedule>,
    pub function: Option<Function>,
    /// `memory` (MiB): the container's memory cap; default `NORN_CONTAINER_MEMORY`.
    pub memory_mb: Option<u32>,
}

impl Process {
    /// A long-running process (not a cron job, not an on-demand function).
    pub fn is_service(&self) -> bool {
        self.schedule.is_none() && self.function.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub path: String,
    #[serde(with = "secs")]
    #[schema(value_type = String)]
    pub interval: Duration,
    #[serde(with = "secs")]
    #[schema(value_type = String)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// As written: 5 fields, or 6 with seconds.
    pub expression: String,
    pub timezone: Option<String>,
    pub policy: CronPolicy,
}

pub use cron::{CronPolicy, Missed, Overlap};
pub use endpoints::Endpoint;
pub use policy::{DeployPolicy, QueuePolicy, StepTimeouts};
pub use previews::Previews;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Function {
    #[serde(with = "secs")]
    #[schema(value_type = String)]
    pub timeout: Duration,
    pub memory_mb: u32,
    /// Runs at once for this function; more wait in the queue (up to
    /// `NORN_FUNCTION_BACKLOG`, then 429).
    pub concurrency: u32,
    /// Containers each worker keeps created and started ahead, waiting for a
    /// request (each used once, then replaced).
    pub warm: u32,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Services {
    pub postgres: Option<Postgres>,
    pub kv: Option<Kv>,
    pub events: Option<Events>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Postgres {
    pub database: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Kv {
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Events {
    pub topics: Vec<String>,
}

/// How the app's database schema moves forward: a command run from the new
/// image, or a folder of changes Norn's change runner applies
/// (`crate::changes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Migrations {
    Command(String),
    /// Relative to the app's source (its repository or directory).
    Dir(String),
}

/// Durations as the API writes them, `"<n>ms"`; read back by clients of the
/// API (the server itself reads specs only through [`InfraSpec::decode`]).
pub(crate) mod secs {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        text.strip_suffix("ms")
            .and_then(|n| n.parse::<u64>().ok())
            .map(Duration::from_millis)
            .ok_or_else(|| format!("expected a duration like \"1500ms\", got {text:?}"))
    }
}

impl InfraSpec {
    /// Parses YAML (JSON is YAML too).
    pub fn parse(text: &str) -> Result<Self, SpecErrors> {
        Self::decode(text, document::Format::Yaml).map(|(_, spec)| spec)
    }

    /// Decodes a document under the node and depth budget of [`document`]
    /// and validates it: the stored document (as JSON) and the typed spec.
    /// CPU-bound for up to [`document::MAX_NODES`] nodes: async callers run
    /// it off their runtime's threads.
    pub fn decode(
        text: &str,
        format: document::Format,
    ) -> Result<(serde_json::Value, Self), SpecErrors> {
        let value = document::decode(text, format).map_err(|e| SpecErrors(vec![e]))?;
        let spec = Self::from_json(value.clone())?;
        Ok((value, spec))
    }

    /// Parses an already-decoded document (the API's JSON body, or a stored spec).
    pub fn from_json(value: serde_json::Value) -> Result<Self, SpecErrors> {
        if !value.is_object() {
            return Err(SpecErrors(vec![FieldError {
                field: String::new(),
                message: "the infraspec must be a mapping".into(),
            }]));
        }
        let raw: raw::RawSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            SpecErrors(vec![FieldError {
                field,
                message: e.into_inner().to_string(),
            }])
        })?;
        validate::validate(raw)
    }

    /// Processes that run continuously and may serve traffic.
    pub fn services(&self) -> impl Iterator<Item = (&String, &Process)> {
        self.processes.iter().filter(|(_, p)| p.is_service())
    }
}

#[cfg(test)]
mod tests;
