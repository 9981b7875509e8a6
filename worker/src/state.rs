//! What every job handler of this worker process shares.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use norn_shared::Config;
use norn_shared::registry::EngineProbe;
use sqlx::PgPool;

use crate::adapters::cloudflared::CloudflaredFile;
use crate::adapters::docker::{DockerEngine, ImageBuilder, Runtime};
use crate::adapters::git::GitSource;
use crate::adapters::kafka::KafkaTopics;
use crate::adapters::migrator::{Migrator, PgMigrator};
use crate::adapters::postgres::PgTools;
use crate::adapters::redis::RedisKv;
use crate::adapters::{KvProvisioner, Provisioner, Source, TopicProvisioner, Tunnel};

pub struct WorkerState {
    pub pool: PgPool,
    pub config: Config,
    pub source: Arc<dyn Source>,
    pub builder: Arc<dyn ImageBuilder>,
    pub runtime: Arc<dyn Runtime>,
    pub pg: Arc<PgTools>,
    /// Norn's change runner on app databases (`migrations.dir`).
    pub migrator: Arc<dyn Migrator>,
    /// Makes apps' services (the same server as `pg`, as the provisioning role).
    pub provisioner: Arc<dyn Provisioner>,
    /// Makes apps' key-value namespaces; `None` without `NORN_KV_URL`.
    pub kv: Option<Arc<dyn KvProvisioner>>,
    /// Makes apps' topics; `None` without `NORN_EVENTS_BROKERS`.
    pub topics: Option<Arc<dyn TopicProvisioner>>,
    /// Routes apps' endpoints from outside; `None` without
    /// `NORN_CLOUDFLARED_CONFIG`.
    pub tunnel: Option<Arc<dyn Tunnel>>,
    pub http: reqwest::Client,
    /// Unique to this process and start (`node:pid:nanos`): the lease holder
    /// identity, never reused by a restarted worker.
    pub token: String,
    /// Jobs running in this process, reported in the cluster heartbeat.
    pub running: Arc<AtomicUsize>,
    /// The engine's state for the heartbeat (the API reports it from there).
    pub engine_probe: EngineProbe,
    /// This process's id in the fleet registry (`cluster_nodes`): function
    /// runs record it, so the sweep can tell when their worker is gone.
    pub node_id: String,
    /// The function runs in this process (for cancels).
    pub invocations: crate::invocations::Invocations,
    /// Warm function containers this process keeps ready.
    pub warm: crate::warm::WarmPools,
}

impl WorkerState {
    /// Counts a job as running until the guard drops.
    pub fn busy(&self) -> norn_shared::registry::Busy {
        norn_shared::registry::Busy::new(&self.running)
    }

    pub async fn new(
        pool: PgPool,
        config: Config,
        running: Arc<AtomicUsize>,
        node_id: String,
    ) -> Result<Self, crate::WorkerError> {
        let defaults = crate::adapters::docker::Defaults {
            memory_mb: config.container_memory_mb,
            pids: config.container_pids,
        };
        let docker =
            DockerEngine::connect(&config.docker_network, Some(pool.clone()), defaults).await?;
        docker.ping().await?;
        // At start, so a host's first deploy never races its workers to create it.
        docker.ensure_network().await?;
        let engine_probe: EngineProbe = {
            let docker = docker.clone();
            Arc::new(move || {
                let docker = docker.clone();
                Box::pin(async move {
                    match tokio::time::timeout(std::time::Duration::from_secs(3), docker.ping())
                        .await
                    {
                        Ok(answer) => answer.map_err(|e| e.to_string()),
                        Err(_) => Err("the Docker engine did not answer within 3 s".into()),
                    }
                })
            })
        };
        let app_db = config
            .app_database_url
            .clone()
            .or_else(|| config.database_url.clone())
            .map(|s| s.expose().to_owned())
            .unwrap_or_default();
        let db_host = app_db
            .parse::<sqlx::postgres::PgConnectOptions>()
            .map(|o| o.get_host().to_owned())
            .unwrap_or_default();
        let db_container_host =
            container_host(config.app_database_host.as_deref(), &db_host, &docker).await?;
        let kv = match &config.kv_url {
            None => None,
            Some(url) => {
                let (host, port) = norn_shared::kv::address(url.expose())
                    .map_err(|e| crate::WorkerError::Interrupted(format!("NORN_KV_URL: {e}")))?;
                let kv: Arc<dyn KvProvisioner> = Arc::new(RedisKv {
                    admin_url: url.expose().to_owned(),
                    container_host: container_host(config.kv_host.as_deref(), &host, &docker)
                        .await?,
                    port,
                });
                Some(kv)
            }
        };
        let topics = match &config.events_brokers {
            None => None,
            Some(list) => {
                let mut container_brokers = Vec::with_capacity(list.len());
                for broker in list {
                    let (host, port) = norn_shared::brokers::address(broker).map_err(|e| {
                        crate::WorkerError::Interrupted(format!("NORN_EVENTS_BROKERS: {e}"))
                    })?;
                    let host =
                        container_host(config.events_host.as_deref(), &host, &docker).await?;
                    container_brokers.push(format!("{host}:{port}"));
                }
                let topics: Arc<dyn TopicProvisioner> = Arc::new(KafkaTopics {
                    brokers: list.clone(),
                    container_brokers,
                    partitions: config.events_partitions,
                    replication: config.events_replication,
                });
                Some(topics)
            }
        };
        let pg = Arc::new(PgTools {
            bin_dir: config.pg_bin_dir(),
            server_url: app_db,
            container_host: db_container_host,
        });
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Ok(Self {
            token: format!("{}:{}:{nanos}", config.node_name, std::process::id()),
            source: Arc::new(GitSource {
                token: config.git_token.clone(),
                ssh_key: config.git_ssh_key.clone(),
                policy: config.git_policy.clone(),
            }),
            builder: Arc::new(docker.clone()),
            runtime: Arc::new(docker),
            provisioner: pg.clone(),
            kv,
            topics,
            tunnel: config.cloudflared_config.as_ref().map(|path| {
                let tunnel: Arc<dyn Tunnel> = Arc::new(CloudflaredFile {
                    path: path.clone(),
                    service: config
                        .cloudflared_service
                        .clone()
                        .unwrap_or_else(|| format!("http://localhost:{}", config.ingress_port)),
                });
                tunnel
            }),
            migrator: Arc::new(PgMigrator { pg: pg.clone() }),
            pg,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            pool,
            config,
            running,
            engine_probe,
            node_id,
            invocations: Default::default(),
            warm: Default::default(),
        })
    }
}

/// Where app containers reach a service's server (the app database's, the
/// key-value server): configured, or the
/// server's host, or — when that is a loopback address, which a container
/// cannot reach — the app network's gateway (the server must listen there;
/// `norn up` and `.ci/pg.sh` do).
async fn container_host(
    configured: Option<&str>,
    host: &str,
    docker: &DockerEngine,
) -> Result<String, crate::WorkerError> {
    if let Some(host) = configured {
        return Ok(host.to_owned());
    }
    let loopback = host == "localhost"
        || host.starts_with('/')
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(docker.gateway().await?)
    } else {
        Ok(host.to_owned())
    }
}
