//! The wire shape of `infraspec.yaml`, as written by users. Only
//! [`super::InfraSpec::parse`] reads it; everything else uses the typed spec.
//! Public only so the OpenAPI document can describe what `POST /api/apps`
//! takes (as `InfraSpecDocument`).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = InfraSpecDocument)]
pub struct RawSpec {
    pub name: Option<String>,
    /// Accepted for compatibility with the seeds; every registered app is deployable.
    #[allow(dead_code)]
    pub deploy: Option<bool>,
    pub repo: Option<RawRepo>,
    pub build: Option<RawBuild>,
    #[serde(default)]
    pub processes: BTreeMap<String, RawProcess>,
    pub services: Option<RawServices>,
    pub infrastructure: Option<RawServices>,
    pub migrations: Option<RawMigrations>,
    #[serde(default)]
    pub env: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub secrets: Vec<String>,
    pub deploy_policy: Option<RawDeployPolicy>,
    pub snapshots: Option<RawSnapshots>,
    #[serde(default)]
    pub endpoints: Vec<super::endpoints::RawEndpoint>,
    pub previews: Option<super::previews::RawPreviews>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSnapshots {
    pub keep: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDeployPolicy {
    pub queue: Option<String>,
    pub auto_rollback: Option<bool>,
    pub restore_on_failed_migration: Option<bool>,
    pub timeouts: Option<RawTimeouts>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub build: Option<Scalar>,
    pub test: Option<Scalar>,
    pub snapshot: Option<Scalar>,
    pub migrate: Option<Scalar>,
    pub healthy: Option<Scalar>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRepo {
    pub url: Option<String>,
    pub branch: Option<String>,
    #[serde(default)]
    pub auto_deploy: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBuild {
    pub dockerfile: Option<String>,
    pub test: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawProcess {
    pub port: Option<i64>,
    pub command: Option<String>,
    pub health: Option<RawHealth>,
    pub replicas: Option<i64>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub cron: Option<RawCron>,
    pub function: Option<RawFunction>,
    pub memory: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCron {
    pub timeout: Option<Scalar>,
    pub grace: Option<Scalar>,
    pub overlap: Option<String>,
    pub missed: Option<String>,
    pub catch_up_limit: Option<i64>,
    pub memory: Option<i64>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFunction {
    pub timeout: Option<Scalar>,
    pub memory: Option<i64>,
    pub concurrency: Option<i64>,
    pub warm: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawServices {
    pub postgres: Option<RawPostgres>,
    pub kv: Option<RawKv>,
    pub events: Option<RawEvents>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPostgres {
    pub database: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawKv {
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEvents {
    #[serde(default)]
    pub topics: Vec<String>,
}

/// `migrations: "./migrate up"` or `migrations: {command: "./migrate up"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RawMigrations {
    Command(String),
    Table {
        command: Option<String>,
        /// A folder of changes (relative to the app's source) for Norn's own
        /// change runner, instead of a command.
        dir: Option<String>,
        /// The seeds' v1 name for the target database; must match the app's.
        database: Option<String>,
    },
}

/// YAML writes `PORT: 8080` and `TIMEOUT: 30`; both are meant as strings.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    pub fn into_string(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}
