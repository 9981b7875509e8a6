//! What every job handler of this worker process shares.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use norn_shared::Config;
use norn_shared::registry::EngineProbe;
use sqlx::PgPool;

use crate::adapters::Source;
use crate::adapters::docker::{DockerEngine, ImageBuilder, Runtime};
use crate::adapters::git::GitSource;
use crate::adapters::postgres::PgTools;

pub struct WorkerState {
    pub pool: PgPool,
    pub config: Config,
    pub source: Arc<dyn Source>,
    pub builder: Arc<dyn ImageBuilder>,
    pub runtime: Arc<dyn Runtime>,
    pub pg: PgTools,
    pub http: reqwest::Client,
    /// Unique to this process and start (`node:pid:nanos`): the lease holder
    /// identity, never reused by a restarted worker.
    pub token: String,
    /// Jobs running in this process, reported in the cluster heartbeat.
    pub running: Arc<AtomicUsize>,
    /// The engine's state for the heartbeat (the API reports it from there).
    pub engine_probe: EngineProbe,
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
    ) -> Result<Self, crate::WorkerError> {
        let docker = DockerEngine::connect(&config.docker_network, Some(pool.clone())).await?;
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
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Ok(Self {
            token: format!("{}:{}:{nanos}", config.node_name, std::process::id()),
            source: Arc::new(GitSource {
                token: config.git_token.clone(),
                ssh_key: config.git_ssh_key.clone(),
            }),
            builder: Arc::new(docker.clone()),
            runtime: Arc::new(docker),
            pg: PgTools {
                bin_dir: config.pg_bin_dir(),
                server_url: app_db,
            },
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            pool,
            config,
            running,
            engine_probe,
        })
    }
}
