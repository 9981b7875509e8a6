//! Configuration from environment variables into one typed struct. Every
//! variable is documented, with its default, in the README.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::domain::parse_duration;

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `NORN_BIND_ADDR`
    pub bind_addr: IpAddr,
    /// `NORN_PORT`
    pub port: u16,
    /// `DATABASE_URL` (also read as `NORN_DATABASE_URL`). `None` only matters to `norn up`,
    /// which then starts a private cluster.
    pub database_url: Option<Secret>,
    /// `NORN_APP_DATABASE_URL`: the server that holds app databases (snapshots, migrations).
    pub app_database_url: Option<Secret>,
    /// `NORN_APPS_DIR`
    pub apps_dir: PathBuf,
    /// `NORN_GIT_TOKEN`
    pub git_token: Option<Secret>,
    /// `NORN_GIT_SSH_KEY`: path of a private key file.
    pub git_ssh_key: Option<PathBuf>,
    /// `NORN_GIT_HOSTS` (comma-separated), `NORN_ALLOW_INSECURE_GIT`,
    /// `NORN_ALLOW_LOCAL_REPOS`: which repositories are cloned and where the
    /// token may go.
    pub git_policy: crate::gitpolicy::GitPolicy,
    /// `NORN_REGISTRY_URL`
    pub registry_url: Option<String>,
    /// `NORN_SNAPSHOTS_DIR`
    pub snapshots_dir: PathBuf,
    /// `NORN_API_TOKEN`
    pub api_token: Option<Secret>,
    /// `NORN_ALLOW_NO_AUTH`: serve the API on a non-loopback address without a token.
    pub allow_no_auth: bool,
    /// `NORN_STEP_LOG_MAX`: bytes of output kept per step (the rest is elided, with a marker).
    pub step_log_max: usize,
    /// `NORN_WORK_DIR`: where checkouts are made.
    pub work_dir: PathBuf,
    /// `NORN_WORKER_CONCURRENCY`: jobs one worker runs at once per queue.
    pub worker_concurrency: usize,
    /// `NORN_FUNCTION_WORKER_CONCURRENCY`: function runs one worker runs at
    /// once (they mostly wait on their containers).
    pub function_worker_concurrency: usize,
    /// `NORN_REQUEST_TIMEOUT`: how long an API request may take (streams,
    /// `/ws` and sync invocations have their own bounds).
    pub request_timeout: Duration,
    /// `NORN_ALLOWED_ORIGINS`: browser origins (comma-separated, e.g.
    /// `https://norn.example.com`) allowed besides this host itself.
    pub allowed_origins: Vec<String>,
    /// `NORN_WEBHOOK_SECRET`: the secret git forges sign webhook deliveries
    /// with, for apps without one of their own (`PUT /api/apps/{id}/webhook-secret`).
    /// Unset: only apps with their own secret take webhooks.
    pub webhook_secret: Option<Secret>,
    /// `NORN_FUNCTION_BACKLOG`: invocations of one function that may wait
    /// beyond its `concurrency` before callers get 429.
    pub function_backlog: u32,
    /// `NORN_DOCKER_NETWORK`: the bridge network app containers join.
    pub docker_network: String,
    /// `NORN_PG_BIN_DIR`: where `pg_dump`, `initdb`, `pg_ctl` live.
    pub pg_bin_dir: Option<PathBuf>,
    /// `NORN_STATE_DIR`: where `norn up` keeps its lock and private Postgres.
    pub state_dir: PathBuf,
    /// `NORN_LOCAL_PG_PORT`: the private Postgres of `norn up` (127.0.0.1 only).
    pub local_pg_port: u16,
    /// `NORN_LOCAL_KV_PORT`: the port of `norn up`'s private `redis-server`
    /// (started when the binary is installed and `NORN_KV_URL` is unset).
    pub local_kv_port: u16,
    /// Step deadlines (`NORN_<STEP>_TIMEOUT`); an app's `deployPolicy.timeouts` overrides them.
    pub step_timeouts: StepDeadlines,
    /// `NORN_LEASE_TTL`: how long an app lease outlives its holder's last renewal,
    /// i.e. how soon a dead worker's deploy is taken over.
    pub lease_ttl: Duration,
    /// `NORN_DEPLOY_MAX_ATTEMPTS`: how many workers may take a deploy on before an
    /// interruption fails it.
    pub deploy_max_attempts: i32,
    /// `NORN_MAX_QUEUED_PER_APP`: more queued deploys than this for one app get 429.
    pub max_queued_per_app: i64,
    /// `NORN_KEEP_IMAGES`: a deploy's cleanup keeps the images of the app's
    /// newest this many releases on its engine and removes the rest (at
    /// least 2, so the previous release can always be rolled back to).
    pub keep_images: i64,
    /// `NORN_DRAIN_GRACE`: how long the old release keeps running after the switch.
    pub drain_grace: Duration,
    /// `NORN_JOB_RETENTION`: finished queue rows older than this are pruned.
    pub job_retention: Duration,
    /// `NORN_LOG_RETENTION`: step output older than this is pruned (the
    /// deployment keeps its short per-step tail).
    pub log_retention: Duration,
    /// `NORN_FUNCTION_RETENTION`: how long ended function runs (with their
    /// output) are kept.
    pub function_retention: Duration,
    /// `NORN_INGRESS_PORT`: the port the api serves app traffic on (0 disables).
    pub ingress_port: u16,
    /// `NORN_NODE_NAME`: a human name for this process in logs and the cluster registry.
    pub node_name: String,
    /// `NORN_HEALTH_CHECK_INTERVAL`: how often the scheduler has every deployed app probed.
    pub health_check_interval: Duration,
    /// `NORN_HEALTH_CHECK_TIMEOUT`: how long one probe may take.
    pub health_check_timeout: Duration,
    /// `NORN_SECRET_KEY` (32 bytes, base64 or hex) or the file `NORN_SECRET_KEY_FILE`:
    /// seals service passwords and secrets at rest. `None`: nothing can be forged.
    pub secret_key: Option<crate::crypto::SecretKey>,
    /// `NORN_SECRET_KEY_PREVIOUS` (comma-separated): keys that still open
    /// values sealed before a rotation, until `norn secrets rotate-key`
    /// re-seals them with the current one.
    pub previous_keys: Vec<crate::crypto::SecretKey>,
    /// `NORN_APP_DATABASE_HOST`: the host app containers reach the app database
    /// server at. Default: the server's own host, or the app network's gateway
    /// when that host is a loopback address.
    pub app_database_host: Option<String>,
    /// `NORN_KV_URL`: the Redis (or Valkey) server app key-value namespaces
    /// live on, as a user allowed `ACL SETUSER` (`redis://user:pass@host:port`).
    /// Unset: a spec declaring `services.kv` cannot be forged.
    pub kv_url: Option<Secret>,
    /// `NORN_KV_HOST`: the host app containers reach that server at. Default:
    /// its own host, or the app network's gateway when that is loopback.
    pub kv_host: Option<String>,
    /// `NORN_EVENTS_BROKERS`: the Kafka-protocol brokers app topics live on
    /// (`host:port[,host:port…]`). Unset: a spec's `services.events` step is
    /// skipped, and its containers get no `KAFKA_BOOTSTRAP_SERVERS`.
    pub events_brokers: Option<Vec<String>>,
    /// `NORN_EVENTS_HOST`: the host app containers reach loopback brokers
    /// at. Default: the app network's gateway.
    pub events_host: Option<String>,
    /// `NORN_EVENTS_PARTITIONS` (default 1): partitions of a new topic.
    pub events_partitions: i32,
    /// `NORN_EVENTS_REPLICATION` (default -1, the cluster's own default):
    /// replication factor of a new topic.
    pub events_replication: i16,
    /// `NORN_CLOUDFLARED_CONFIG`: a cloudflared config file whose `ingress`
    /// rules the forge keeps in step with apps' `endpoints`. Unset: none.
    pub cloudflared_config: Option<PathBuf>,
    /// `NORN_CLOUDFLARED_SERVICE`: where those rules send traffic. Default:
    /// Norn's ingress, `http://localhost:<NORN_INGRESS_PORT>`.
    pub cloudflared_service: Option<String>,
    /// `NORN_CONTAINER_MEMORY`: MiB of memory an app container may use when its
    /// process sets no `memory` (no swap beyond it).
    pub container_memory_mb: u32,
    /// `NORN_CONTAINER_PIDS`: how many processes an app container may run.
    pub container_pids: i64,
}

/// How long each deploy step may run before it is killed and fails.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDeadlines {
    pub clone: Duration,
    pub build: Duration,
    pub test: Duration,
    pub snapshot: Duration,
    pub migrate: Duration,
    /// Starting the new release's containers.
    pub deploy: Duration,
    /// How long a new release may take to answer its health path.
    pub healthy: Duration,
}

impl StepDeadlines {
    fn from_env() -> Result<Self, ConfigError> {
        let m = |n: u64| Duration::from_secs(n * 60);
        Ok(Self {
            clone: duration("NORN_CLONE_TIMEOUT", m(10))?,
            build: duration("NORN_BUILD_TIMEOUT", m(30))?,
            test: duration("NORN_TEST_TIMEOUT", m(10))?,
            snapshot: duration("NORN_SNAPSHOT_TIMEOUT", m(10))?,
            migrate: duration("NORN_MIGRATE_TIMEOUT", m(10))?,
            deploy: duration("NORN_DEPLOY_TIMEOUT", m(5))?,
            healthy: duration("NORN_HEALTHY_TIMEOUT", m(5))?,
        })
    }
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parsed<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|e: T::Err| ConfigError {
            var: name,
            message: format!("cannot parse {raw:?}: {e}"),
        }),
    }
}

fn duration(name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(raw) => parse_duration(&raw).map_err(|message| ConfigError { var: name, message }),
    }
}

fn secret_key() -> Result<Option<crate::crypto::SecretKey>, ConfigError> {
    let (var_name, text) = match (var("NORN_SECRET_KEY"), var("NORN_SECRET_KEY_FILE")) {
        (Some(key), _) => ("NORN_SECRET_KEY", key),
        (None, Some(path)) => (
            "NORN_SECRET_KEY_FILE",
            std::fs::read_to_string(&path).map_err(|e| ConfigError {
                var: "NORN_SECRET_KEY_FILE",
                message: format!("reading {path}: {e}"),
            })?,
        ),
        (None, None) => return Ok(None),
    };
    crate::crypto::SecretKey::parse(&text)
        .map(Some)
        .map_err(|e| ConfigError {
            var: var_name,
            message: e.to_string(),
        })
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let worker_concurrency = parsed("NORN_WORKER_CONCURRENCY", 4usize)?;
        if worker_concurrency == 0 {
            return Err(ConfigError {
                var: "NORN_WORKER_CONCURRENCY",
                message: "must be at least 1".into(),
            });
        }
        let function_worker_concurrency = parsed("NORN_FUNCTION_WORKER_CONCURRENCY", 32usize)?;
        if function_worker_concurrency == 0 {
            return Err(ConfigError {
                var: "NORN_FUNCTION_WORKER_CONCURRENCY",
                message: "must be at least 1".into(),
            });
        }
        let host = var("HOSTNAME").unwrap_or_else(|| "norn".into());
        Ok(Self {
            function_worker_concurrency,
            function_backlog: parsed("NORN_FUNCTION_BACKLOG", 100u32)?,
            request_timeout: duration("NORN_REQUEST_TIMEOUT", Duration::from_secs(30))?,
            allowed_origins: var("NORN_ALLOWED_ORIGINS")
                .map(|v| {
                    v.split(',')
                        .map(|o| o.trim().trim_end_matches('/').to_owned())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            bind_addr: parsed("NORN_BIND_ADDR", IpAddr::from([127, 0, 0, 1]))?,
            port: parsed("NORN_PORT", 8800u16)?,
            database_url: var("DATABASE_URL")
                .or_else(|| var("NORN_DATABASE_URL"))
                .map(Secret::new),
            app_database_url: var("NORN_APP_DATABASE_URL").map(Secret::new),
            apps_dir: var("NORN_APPS_DIR").unwrap_or_else(|| "apps".into()).into(),
            git_token: var("NORN_GIT_TOKEN").map(Secret::new),
            git_ssh_key: var("NORN_GIT_SSH_KEY").map(PathBuf::from),
            git_policy: crate::gitpolicy::GitPolicy {
                hosts: var("NORN_GIT_HOSTS")
                    .map(|v| {
                        v.split(',')
                            .map(|h| h.trim().to_ascii_lowercase())
                            .filter(|h| !h.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
                allow_insecure: parsed("NORN_ALLOW_INSECURE_GIT", false)?,
                allow_local: parsed("NORN_ALLOW_LOCAL_REPOS", false)?,
            },
            registry_url: var("NORN_REGISTRY_URL"),
            snapshots_dir: var("NORN_SNAPSHOTS_DIR")
                .unwrap_or_else(|| "snapshots".into())
                .into(),
            api_token: var("NORN_API_TOKEN").map(Secret::new),
            webhook_secret: var("NORN_WEBHOOK_SECRET").map(Secret::new),
            allow_no_auth: parsed("NORN_ALLOW_NO_AUTH", false)?,
            step_log_max: parsed("NORN_STEP_LOG_MAX", 16usize << 20)?.max(64 << 10),
            work_dir: var("NORN_WORK_DIR")
                .map(PathBuf::from)
                // One directory per user: another user's checkouts are neither
                // readable nor a place to plant files.
                .unwrap_or_else(|| {
                    // SAFETY: getuid has no preconditions and cannot fail.
                    let uid = unsafe { libc::getuid() };
                    std::env::temp_dir().join(format!("norn-work-{uid}"))
                }),
            worker_concurrency,
            docker_network: var("NORN_DOCKER_NETWORK").unwrap_or_else(|| "norn".into()),
            pg_bin_dir: var("NORN_PG_BIN_DIR").map(PathBuf::from),
            state_dir: var("NORN_STATE_DIR")
                .unwrap_or_else(|| ".norn".into())
                .into(),
            local_pg_port: parsed("NORN_LOCAL_PG_PORT", 55499u16)?,
            local_kv_port: parsed("NORN_LOCAL_KV_PORT", 55498u16)?,
            step_timeouts: StepDeadlines::from_env()?,
            lease_ttl: duration("NORN_LEASE_TTL", Duration::from_secs(30))?,
            deploy_max_attempts: parsed("NORN_DEPLOY_MAX_ATTEMPTS", 3i32)?.max(1),
            max_queued_per_app: parsed("NORN_MAX_QUEUED_PER_APP", 10i64)?.max(1),
            keep_images: parsed("NORN_KEEP_IMAGES", 5i64)?.clamp(2, 1000),
            drain_grace: duration("NORN_DRAIN_GRACE", Duration::from_secs(2))?,
            job_retention: duration("NORN_JOB_RETENTION", Duration::from_secs(24 * 3600))?,
            log_retention: duration("NORN_LOG_RETENTION", Duration::from_secs(30 * 24 * 3600))?,
            function_retention: duration(
                "NORN_FUNCTION_RETENTION",
                Duration::from_secs(7 * 24 * 3600),
            )?,
            ingress_port: parsed("NORN_INGRESS_PORT", 8880u16)?,
            node_name: var("NORN_NODE_NAME").unwrap_or(host),
            health_check_interval: duration("NORN_HEALTH_CHECK_INTERVAL", Duration::from_secs(30))?,
            health_check_timeout: duration("NORN_HEALTH_CHECK_TIMEOUT", Duration::from_secs(5))?,
            secret_key: secret_key()?,
            previous_keys: match var("NORN_SECRET_KEY_PREVIOUS") {
                None => Vec::new(),
                Some(list) => list
                    .split(',')
                    .filter(|k| !k.trim().is_empty())
                    .map(crate::crypto::SecretKey::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|e| ConfigError {
                        var: "NORN_SECRET_KEY_PREVIOUS",
                        message: e.to_string(),
                    })?,
            },
            app_database_host: var("NORN_APP_DATABASE_HOST"),
            kv_url: var("NORN_KV_URL").map(Secret::new),
            kv_host: var("NORN_KV_HOST"),
            events_brokers: var("NORN_EVENTS_BROKERS")
                .map(|raw| crate::brokers::parse_list(&raw))
                .transpose()
                .map_err(|message| ConfigError {
                    var: "NORN_EVENTS_BROKERS",
                    message,
                })?,
            events_host: var("NORN_EVENTS_HOST"),
            events_partitions: parsed("NORN_EVENTS_PARTITIONS", 1i32)?.clamp(1, 10_000),
            events_replication: parsed("NORN_EVENTS_REPLICATION", -1i16)?,
            cloudflared_config: var("NORN_CLOUDFLARED_CONFIG").map(PathBuf::from),
            cloudflared_service: var("NORN_CLOUDFLARED_SERVICE"),
            container_memory_mb: parsed("NORN_CONTAINER_MEMORY", 512u32)?.max(16),
            container_pids: parsed("NORN_CONTAINER_PIDS", 512i64)?.max(16),
        })
    }

    /// The key that seals new values; an error naming the variables when none is set.
    pub fn sealing_key(&self) -> Result<&crate::crypto::SecretKey, crate::crypto::CryptoError> {
        self.secret_key
            .as_ref()
            .ok_or(crate::crypto::CryptoError::NoKey)
    }

    /// Opens a sealed value with whichever configured key sealed it.
    pub fn open_sealed(
        &self,
        sealed: &crate::crypto::Sealed,
    ) -> Result<String, crate::crypto::CryptoError> {
        let current = self.sealing_key()?;
        match self.previous_keys.iter().find(|k| k.id() == sealed.key_id) {
            Some(previous) => previous.open(sealed),
            None => current.open(sealed),
        }
    }

    /// The database URL every server role needs.
    pub fn require_database_url(&self) -> Result<&str, ConfigError> {
        self.database_url
            .as_ref()
            .map(Secret::expose)
            .ok_or(ConfigError {
                var: "DATABASE_URL",
                message: "is not set (or run `norn up`, which starts a private Postgres)".into(),
            })
    }

    /// The directory of PostgreSQL client/server binaries: configured, or the newest
    /// Debian-style install, or `None` to rely on `PATH`.
    pub fn pg_bin_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.pg_bin_dir {
            return Some(dir.clone());
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("pg_dump").exists())
            .collect();
        found.sort_by_key(|p| {
            p.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        });
        found.pop()
    }
}
