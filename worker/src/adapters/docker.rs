//! `ImageBuilder` and `Runtime` on the Docker engine (bollard).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions,
    ListContainersOptionsBuilder, LogsOptionsBuilder, PushImageOptionsBuilder,
    RemoveContainerOptionsBuilder, TagImageOptionsBuilder,
};
use futures::StreamExt;

use super::{Finished, Instance, InstanceSpec, OneOff, Output, Running};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("{0}")]
    Failed(String),
    #[error("timed out after {0:?}")]
    TimedOut(std::time::Duration),
}

/// Builds images from a checkout.
#[async_trait::async_trait]
pub trait ImageBuilder: Send + Sync {
    /// Builds `tag` from `context`; build output goes to `out` as it comes.
    async fn build(
        &self,
        context: &Path,
        dockerfile: &str,
        tag: &str,
        out: &mut dyn Output,
    ) -> Result<(), RuntimeError>;
    /// Pushes `tag` to `registry` and returns the pushed reference.
    async fn push(
        &self,
        tag: &str,
        registry: &str,
        out: &mut dyn Output,
    ) -> Result<String, RuntimeError>;
    /// The tags of the images Norn built for `app` here (`<app>:<version>`).
    async fn images(&self, app: &str) -> Result<Vec<String>, RuntimeError>;
    /// Removes the image tag `tag`; an image a container still uses stays.
    async fn remove_image(&self, tag: &str) -> Result<(), RuntimeError>;
}

/// Runs containers: one-off jobs and long-running release instances.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Runs a one-off to its end; its output goes to `out`. The exit code.
    async fn run_once(&self, job: &OneOff, out: &mut dyn Output) -> Result<i64, RuntimeError> {
        self.start_once(job).await?;
        match self.finish_once(&job.name, job.timeout, out).await? {
            Finished::Exited { exit_code } => Ok(exit_code),
            Finished::TimedOut => Err(RuntimeError::TimedOut(job.timeout)),
            Finished::OutOfMemory => Err(RuntimeError::Failed(
                "killed: it used more than its memory limit".into(),
            )),
        }
    }
    /// Creates and starts a one-off container (replacing a leftover of the same name).
    async fn start_once(&self, job: &OneOff) -> Result<(), RuntimeError>;
    /// Waits up to `timeout` for a started one-off while streaming its output
    /// to `out`, kills it past that, and removes it.
    async fn finish_once(
        &self,
        name: &str,
        timeout: Duration,
        out: &mut dyn Output,
    ) -> Result<Finished, RuntimeError>;
    /// Starts (or restarts, when re-run) one instance and returns its address.
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError>;
    async fn is_running(&self, name: &str) -> Result<bool, RuntimeError>;
    /// Stops and removes an instance; absent is fine.
    async fn remove(&self, name: &str) -> Result<(), RuntimeError>;
    /// Instances of `app`, as (name, deployment id).
    async fn instances(&self, app: &str) -> Result<Vec<(String, String)>, RuntimeError>;
    /// Every running release instance of every app on this engine, with its
    /// current address.
    async fn running(&self) -> Result<Vec<Running>, RuntimeError>;
    /// Runs a function: `job` with `input` on its stdin, to its end or
    /// `job.timeout` (then killed); its output goes to `out`. The container
    /// is removed afterwards, without the caller waiting for it.
    async fn invoke(
        &self,
        job: &OneOff,
        input: bytes::Bytes,
        out: &mut dyn Output,
    ) -> Result<Finished, RuntimeError>;
    /// Creates and starts a warm function container (`job.command` must
    /// wait on stdin for its request).
    async fn start_warm(&self, job: &OneOff) -> Result<(), RuntimeError>;
    /// Runs a request on a warm container, like [`Runtime::invoke`].
    async fn invoke_warm(
        &self,
        name: &str,
        timeout: Duration,
        input: bytes::Bytes,
        out: &mut dyn Output,
    ) -> Result<Finished, RuntimeError>;
    /// Function containers on this engine, running or not.
    async fn function_containers(&self) -> Result<Vec<super::FunctionContainer>, RuntimeError>;
}

#[derive(Clone)]
pub struct DockerEngine {
    pub(super) client: Docker,
    /// The bridge network release instances join (see `network.rs`).
    pub(super) network: String,
    /// The engine's own ID: with the network name, the key of the
    /// cross-process lock on network creation.
    pub(super) engine_id: String,
    /// Where that lock is taken; `None` only where one process uses the engine.
    pub(super) lock_pool: Option<sqlx::PgPool>,
    /// Caps every app container gets unless its spec sets its own.
    pub(super) defaults: Defaults,
}

/// The default caps of an app container (`NORN_CONTAINER_MEMORY`,
/// `NORN_CONTAINER_PIDS`).
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub memory_mb: u32,
    pub pids: i64,
}

/// What every app container runs with, whatever its spec says: someone
/// else's code, so no privilege escalation (setuid binaries), no raw
/// sockets (spoofing on the app network), bounded processes and memory, no
/// swap beyond the memory cap, and never the host's network. The image's
/// own `USER` is kept.
fn hardened(network_id: String, memory_mb: u32, pids: i64) -> HostConfig {
    let bytes = i64::from(memory_mb) * 1024 * 1024;
    HostConfig {
        network_mode: Some(network_id),
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        cap_drop: Some(vec!["NET_RAW".into()]),
        pids_limit: Some(pids),
        memory: Some(bytes),
        memory_swap: Some(bytes),
        ..Default::default()
    }
}

impl DockerEngine {
    /// What a one-off container (test, migration, cron run, function) is
    /// created with. On the app network like the app's instances: it is the
    /// app's code too, and gets no more than they do.
    pub(super) async fn oneoff_body(
        &self,
        job: &OneOff,
    ) -> Result<ContainerCreateBody, RuntimeError> {
        let network_id = self.ensure_network().await?;
        let host_config = match job.limits {
            Some(l) => HostConfig {
                nano_cpus: Some((l.cpus * 1e9) as i64),
                ..hardened(network_id, l.memory_mb, l.pids)
            },
            None => hardened(network_id, self.defaults.memory_mb, self.defaults.pids),
        };
        Ok(ContainerCreateBody {
            image: Some(job.image.clone()),
            cmd: Some(vec!["/bin/sh".into(), "-c".into(), job.command.clone()]),
            env: Some(env(&job.env)),
            labels: Some(labels(&job.labels)),
            host_config: Some(host_config),
            ..Default::default()
        })
    }

    /// Every container (running or not) with the label `filter`
    /// (`key` or `key=value`).
    pub(super) async fn labelled(
        &self,
        filter: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let filters = HashMap::from([("label".to_string(), vec![filter.to_owned()])]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        Ok(self.client.list_containers(Some(opts)).await?)
    }

    /// Whether the engine killed the container for its memory cap.
    pub(super) async fn oom_killed(&self, name: &str) -> bool {
        self.client
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|info| info.state?.oom_killed)
            .unwrap_or(false)
    }

    pub async fn connect(
        network: &str,
        lock_pool: Option<sqlx::PgPool>,
        defaults: Defaults,
    ) -> Result<Self, RuntimeError> {
        let client = Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        let engine_id = client.info().await?.id.unwrap_or_default();
        Ok(Self {
            client,
            network: network.to_owned(),
            engine_id,
            lock_pool,
            defaults,
        })
    }

    pub async fn ping(&self) -> Result<(), RuntimeError> {
        self.client.ping().await?;
        Ok(())
    }

    /// Streams a container's stdout and stderr to `out` until it stops.
    async fn follow_logs(&self, name: &str, out: &mut dyn Output) {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(true)
            .build();
        let mut stream = self.client.logs(name, Some(opts));
        while let Some(Ok(chunk)) = stream.next().await {
            out.write(&String::from_utf8_lossy(&chunk.into_bytes()))
                .await;
        }
    }

    pub(super) async fn wait_exit(&self, name: &str) -> Result<i64, RuntimeError> {
        let mut stream = self.client.wait_container(
            name,
            None::<bollard::query_parameters::WaitContainerOptions>,
        );
        match stream.next().await {
            Some(Ok(resp)) => Ok(resp.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(e.into()),
            None => Err(RuntimeError::Failed(format!(
                "container {name} vanished while running"
            ))),
        }
    }
}

pub(super) fn labels(map: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn env(map: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    map.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn tar_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}

#[async_trait::async_trait]
impl ImageBuilder for DockerEngine {
    async fn build(
        &self,
        context: &Path,
        dockerfile: &str,
        tag: &str,
        out: &mut dyn Output,
    ) -> Result<(), RuntimeError> {
        let dir = context.to_owned();
        let archive = tokio::task::spawn_blocking(move || tar_dir(&dir))
            .await
            .map_err(|e| RuntimeError::Failed(format!("packing build context: {e}")))?
            .map_err(|e| RuntimeError::Failed(format!("packing build context: {e}")))?;
        let opts = BuildImageOptionsBuilder::default()
            .dockerfile(dockerfile)
            .t(tag)
            .rm(true)
            .forcerm(true)
            .labels(&HashMap::from([("norn.managed", "true")]))
            .build();
        let mut stream =
            self.client
                .build_image(opts, None, Some(bollard::body_full(archive.into())));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| match e {
                bollard::errors::Error::DockerStreamError { error } => RuntimeError::Failed(error),
                other => other.into(),
            })?;
            if let Some(s) = info.stream {
                out.write(&s).await;
            }
            if let Some(detail) = info.error_detail {
                return Err(RuntimeError::Failed(
                    detail.message.unwrap_or_else(|| "build failed".into()),
                ));
            }
        }
        Ok(())
    }

    async fn push(
        &self,
        tag: &str,
        registry: &str,
        out: &mut dyn Output,
    ) -> Result<String, RuntimeError> {
        let (name, version) = tag.split_once(':').unwrap_or((tag, "latest"));
        let repo = format!("{}/{name}", registry.trim_end_matches('/'));
        self.client
            .tag_image(
                tag,
                Some(
                    TagImageOptionsBuilder::default()
                        .repo(&repo)
                        .tag(version)
                        .build(),
                ),
            )
            .await?;
        let mut stream = self.client.push_image(
            &repo,
            Some(PushImageOptionsBuilder::default().tag(version).build()),
            None,
        );
        while let Some(item) = stream.next().await {
            let info = item?;
            if let Some(status) = info.status {
                out.write(&format!("{status}\n")).await;
            }
            if let Some(detail) = info.error_detail {
                return Err(RuntimeError::Failed(
                    detail.message.unwrap_or_else(|| "push failed".into()),
                ));
            }
        }
        Ok(format!("{repo}:{version}"))
    }

    async fn images(&self, app: &str) -> Result<Vec<String>, RuntimeError> {
        let filters = HashMap::from([
            ("reference", vec![format!("{app}:*")]),
            ("label", vec!["norn.managed=true".to_owned()]),
        ]);
        let list = self
            .client
            .list_images(Some(
                bollard::query_parameters::ListImagesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        let prefix = format!("{app}:");
        Ok(list
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .filter(|t| t.starts_with(&prefix))
            .collect())
    }

    async fn remove_image(&self, tag: &str) -> Result<(), RuntimeError> {
        self.client
            .remove_image(
                tag,
                Some(
                    bollard::query_parameters::RemoveImageOptionsBuilder::default()
                        .force(false)
                        .build(),
                ),
                None,
            )
            .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Runtime for DockerEngine {
    async fn start_once(&self, job: &OneOff) -> Result<(), RuntimeError> {
        self.remove(&job.name).await?;
        let body = self.oneoff_body(job).await?;
        let opts = CreateContainerOptionsBuilder::default()
            .name(&job.name)
            .build();
        self.client.create_container(Some(opts), body).await?;
        self.client.start_container(&job.name, None).await?;
        Ok(())
    }

    async fn finish_once(
        &self,
        name: &str,
        timeout: Duration,
        out: &mut dyn Output,
    ) -> Result<Finished, RuntimeError> {
        let run = async {
            let (code, ()) = tokio::join!(self.wait_exit(name), self.follow_logs(name, out));
            code
        };
        let exit = tokio::time::timeout(timeout, run).await;
        if exit.is_err() {
            let _ = self
                .client
                .kill_container(
                    name,
                    None::<bollard::query_parameters::KillContainerOptions>,
                )
                .await;
        }
        let finished = match exit {
            Ok(code) => {
                let exit_code = code?;
                if exit_code != 0 && self.oom_killed(name).await {
                    Finished::OutOfMemory
                } else {
                    Finished::Exited { exit_code }
                }
            }
            Err(_) => Finished::TimedOut,
        };
        self.remove(name).await?;
        Ok(finished)
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let network_id = self.ensure_network().await?;
        self.remove(&spec.name).await?;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec
                .command
                .as_ref()
                .map(|c| vec!["/bin/sh".into(), "-c".into(), c.clone()]),
            env: Some(env(&spec.env)),
            labels: Some(labels(&spec.labels)),
            host_config: Some(HostConfig {
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                // By ID: a duplicate name (see network.rs) would be ambiguous.
                ..hardened(
                    network_id.clone(),
                    spec.memory_mb.unwrap_or(self.defaults.memory_mb),
                    self.defaults.pids,
                )
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        self.client.create_container(Some(opts), body).await?;
        self.client.start_container(&spec.name, None).await?;
        let info = self
            .client
            .inspect_container(&spec.name, None::<InspectContainerOptions>)
            .await?;
        let ip = info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| {
                n.into_values()
                    .find(|e| e.network_id.as_deref() == Some(network_id.as_str()))
                    .and_then(|e| e.ip_address)
            })
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| {
                RuntimeError::Failed(format!(
                    "{} has no address on network {}",
                    spec.name, self.network
                ))
            })?;
        Ok(Instance {
            name: spec.name.clone(),
            ip,
        })
    }

    async fn is_running(&self, name: &str) -> Result<bool, RuntimeError> {
        match self
            .client
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => Ok(info.state.and_then(|s| s.running).unwrap_or(false)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.client.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // Already being removed by a concurrent call.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn instances(&self, app: &str) -> Result<Vec<(String, String)>, RuntimeError> {
        let list = self.labelled(&format!("norn.app={app}")).await?;
        Ok(list
            .into_iter()
            .filter(|c| {
                c.labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key("norn.process"))
            })
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_owned();
                let dep = c.labels?.get("norn.deployment")?.clone();
                Some((name, dep))
            })
            .collect())
    }

    async fn invoke(
        &self,
        job: &OneOff,
        input: bytes::Bytes,
        out: &mut dyn Output,
    ) -> Result<Finished, RuntimeError> {
        self.run_function(job, input, out).await
    }

    async fn start_warm(&self, job: &OneOff) -> Result<(), RuntimeError> {
        self.start_warm_function(job).await
    }

    async fn invoke_warm(
        &self,
        name: &str,
        timeout: Duration,
        input: bytes::Bytes,
        out: &mut dyn Output,
    ) -> Result<Finished, RuntimeError> {
        self.run_warm_function(name, timeout, input, out).await
    }

    async fn function_containers(&self) -> Result<Vec<super::FunctionContainer>, RuntimeError> {
        self.function_containers_listed().await
    }

    async fn running(&self) -> Result<Vec<Running>, RuntimeError> {
        let filters = HashMap::from([("label".to_string(), vec!["norn.process".to_string()])]);
        let opts = ListContainersOptionsBuilder::default()
            .filters(&filters)
            .build();
        let list = self.client.list_containers(Some(opts)).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels?;
                let ip = c
                    .network_settings?
                    .networks?
                    .remove(&self.network)?
                    .ip_address
                    .filter(|ip| !ip.is_empty())?;
                Some(Running {
                    deployment: labels.get("norn.deployment")?.clone(),
                    process: labels.get("norn.process")?.clone(),
                    ip,
                })
            })
            .collect())
    }
}
