//! The seams the pipeline steps depend on, and their real implementations.
//! Steps never touch git2 or bollard directly.

pub mod cloudflared;
pub mod docker;
pub mod filelock;
pub mod git;
pub mod invoke;
pub mod kafka;
pub mod migrator;
pub mod network;
pub mod postgres;
pub mod redis;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use norn_shared::domain::GitRef;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Clone(String),
    #[error("{0}")]
    Ref(String),
}

pub struct FetchRequest {
    pub repo_url: Option<String>,
    pub default_branch: Option<String>,
    pub local_dir: Option<PathBuf>,
    pub git_ref: GitRef,
}

pub struct Checkout {
    pub sha: String,
    pub description: String,
}

/// Where a tool's output goes as it is produced (a step log, a bounded tail):
/// never collected whole, so a noisy build costs bounded memory.
#[async_trait::async_trait]
pub trait Output: Send {
    async fn write(&mut self, text: &str);
}

#[async_trait::async_trait]
impl Output for norn_shared::text::Tail {
    async fn write(&mut self, text: &str) {
        self.push(text);
    }
}

/// A [`norn_shared::text::Tail`] that never holds a secret value: what is
/// written passes a [`norn_shared::text::Masker`] first (cron output).
pub struct MaskedTail {
    pub masker: norn_shared::text::Masker,
    pub tail: norn_shared::text::Tail,
}

impl MaskedTail {
    pub fn finish(self) -> String {
        self.finish_counting().0
    }

    /// The kept text and how many bytes fell off its front.
    pub fn finish_counting(mut self) -> (String, u64) {
        let rest = self.masker.finish();
        self.tail.push(&rest);
        let dropped = self.tail.dropped();
        (self.tail.finish(), dropped)
    }
}

#[async_trait::async_trait]
impl Output for MaskedTail {
    async fn write(&mut self, text: &str) {
        let shown = self.masker.push(text);
        self.tail.push(&shown);
    }
}

/// Fetches code at a ref into a directory. Blocking (git2 is); callers run it
/// on a blocking thread.
pub trait Source: Send + Sync {
    fn fetch(&self, req: &FetchRequest, dest: &Path) -> Result<Checkout, SourceError>;
}

/// A container run to completion: tests, migrations.
#[derive(Debug, Clone)]
pub struct OneOff {
    pub name: String,
    pub image: String,
    pub command: String,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Resource caps; `None`: Norn's defaults (`NORN_CONTAINER_MEMORY`,
    /// `NORN_CONTAINER_PIDS`), for tests and migrations.
    pub limits: Option<Limits>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_mb: u32,
    pub cpus: f64,
    pub pids: i64,
}

/// How a started one-off container ended (its output went to an [`Output`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Exited {
        exit_code: i64,
    },
    /// Killed at its deadline.
    TimedOut,
    /// Killed by the engine for using more than its memory cap.
    OutOfMemory,
}

/// A function's container as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionContainer {
    pub name: String,
    /// `None`: a warm container, made before any request.
    pub execution: Option<i64>,
    /// The fleet node (worker) that ran it.
    pub node: String,
}

/// One long-running container of a release.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub name: String,
    pub image: String,
    pub command: Option<String>,
    pub env: BTreeMap<String, String>,
    /// The process's `memory` (MiB); `None`: `NORN_CONTAINER_MEMORY`.
    pub memory_mb: Option<u32>,
    pub labels: BTreeMap<String, String>,
}

/// A running release instance as the engine sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub deployment: String,
    pub process: String,
    /// Its address on the app network now (a restart may have changed it).
    pub ip: String,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    /// Reachable address on the app network, e.g. `172.18.0.5`.
    pub ip: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    Failed(String),
}

impl From<postgres::SnapshotError> for ProvisionError {
    fn from(e: postgres::SnapshotError) -> Self {
        let postgres::SnapshotError::Failed(message) = e;
        Self::Failed(message)
    }
}

/// What an app's database needs: its own login role owning it, and no one
/// else allowed in.
pub struct DatabaseGrant<'a> {
    pub app: &'a str,
    pub database: &'a str,
    pub role: &'a str,
    pub password: &'a str,
}

/// What tearing an app's database down needs.
pub struct DatabaseRevoke<'a> {
    pub app: &'a str,
    pub database: &'a str,
    pub role: &'a str,
    /// Drop the database and the role; else the role only loses its login.
    pub drop_data: bool,
}

/// Makes an app's services exist, each reachable by that app alone.
/// Idempotent: a forge resumed after a failure runs it again.
#[async_trait::async_trait]
pub trait Provisioner: Send + Sync {
    /// Creates (or takes back into shape) the app's role and database.
    /// Returns what it did, for the forge's step log.
    async fn database(&self, grant: &DatabaseGrant<'_>) -> Result<String, ProvisionError>;
    /// Undoes [`Provisioner::database`]: the app's role can no longer log
    /// in and its sessions end; with `drop_data`, database and role go.
    async fn revoke_database(&self, revoke: &DatabaseRevoke<'_>) -> Result<String, ProvisionError>;
}

/// What an app's key-value namespace needs: a user of its own, limited to
/// the keys and channels `<namespace>:*`.
pub struct KvGrant<'a> {
    pub app: &'a str,
    pub namespace: &'a str,
    pub user: &'a str,
    pub password: &'a str,
}

/// What tearing an app's namespace down needs.
pub struct KvRevoke<'a> {
    pub app: &'a str,
    pub namespace: &'a str,
    pub user: &'a str,
    /// Delete the namespace's keys too; else only the user goes.
    pub drop_data: bool,
}

/// Key-value namespaces, each reachable by its app alone. Idempotent.
#[async_trait::async_trait]
pub trait KvProvisioner: Send + Sync {
    /// Creates (or resets to Norn's rules) the app's user. Returns what it
    /// did, for the forge's step log.
    async fn namespace(&self, grant: &KvGrant<'_>) -> Result<String, ProvisionError>;
    /// Undoes [`KvProvisioner::namespace`]: the user and its connections go;
    /// with `drop_data`, the namespace's keys too.
    async fn revoke_namespace(&self, revoke: &KvRevoke<'_>) -> Result<String, ProvisionError>;
    /// The `REDIS_URL` an app container gets.
    fn container_url(&self, user: &str, password: &str) -> String;
}

/// Topics on Kafka-protocol brokers, named under their app's prefix.
/// Idempotent: a topic that exists already is left as it is.
#[async_trait::async_trait]
pub trait TopicProvisioner: Send + Sync {
    /// Creates the missing ones of `topics` (full broker names). Returns
    /// what it did, for the forge's step log.
    async fn topics(&self, topics: &[String]) -> Result<String, ProvisionError>;
    /// Deletes `topics` (and what they hold); one already gone is fine.
    async fn delete_topics(&self, topics: &[String]) -> Result<String, ProvisionError>;
    /// The `KAFKA_BOOTSTRAP_SERVERS` an app container gets.
    fn container_brokers(&self) -> String;
}

/// Routes public hostnames to Norn's ingress from outside (a tunnel).
#[async_trait::async_trait]
pub trait Tunnel: Send + Sync {
    /// Routes `hostnames` (replacing rules for `previous` ones no longer
    /// listed). Returns what it did, for the forge's step log.
    async fn route(
        &self,
        hostnames: &[String],
        previous: &[String],
    ) -> Result<String, ProvisionError>;
    /// Removes the rules for `hostnames`.
    async fn unroute(&self, hostnames: &[String]) -> Result<String, ProvisionError>;
}
