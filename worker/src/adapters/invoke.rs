//! A function run on the Docker engine: the request body goes to the
//! container's stdin, its output comes back over the same attached
//! connection, and nothing waits for the container's removal.

use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptions,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::docker::{DockerEngine, RuntimeError};
use super::{Finished, OneOff, Output};

/// The labels every function container carries: its execution's id, and
/// the fleet node that ran it.
pub const EXECUTION_LABEL: &str = "norn.function.execution";
pub const NODE_LABEL: &str = "norn.function.node";

impl DockerEngine {
    pub(super) async fn run_function(
        &self,
        job: &OneOff,
        input: bytes::Bytes,
        out: &mut dyn Output,
    ) -> Result<Finished, RuntimeError> {
        self.create_function(job).await?;
        // From here on the container exists: it is removed however this ends.
        let ran = self
            .attach_and_run(&job.name, true, job.timeout, input, out)
            .await;
        self.ended(&job.name, ran).await
    }

    /// Creates and starts a warm container: its shell waits for the first
    /// line of its stdin before it runs the function.
    pub(super) async fn start_warm_function(&self, job: &OneOff) -> Result<(), RuntimeError> {
        self.create_function(job).await?;
        if let Err(e) = self.client.start_container(&job.name, None).await {
            self.remove_later(&job.name);
            return Err(e.into());
        }
        Ok(())
    }

    /// Runs a request on a warm container started by
    /// [`DockerEngine::start_warm_function`]; `input` starts with the line
    /// its shell waits for.
    pub(super) async fn run_warm_function(
        &self,
        name: &str,
        timeout: std::time::Duration,
        input: bytes::Bytes,
        out: &mut dyn Output,
    ) -> Result<Finished, RuntimeError> {
        let ran = self.attach_and_run(name, false, timeout, input, out).await;
        self.ended(name, ran).await
    }

    /// Creates a function container with its stdin open: the engine closes
    /// the container's stdin when the attached client closes its side, so
    /// the function reads to EOF.
    async fn create_function(&self, job: &OneOff) -> Result<(), RuntimeError> {
        let mut body = self.oneoff_body(job).await?;
        body.attach_stdin = Some(true);
        body.attach_stdout = Some(true);
        body.attach_stderr = Some(true);
        body.open_stdin = Some(true);
        body.stdin_once = Some(true);
        let opts = CreateContainerOptionsBuilder::default()
            .name(&job.name)
            .build();
        self.client.create_container(Some(opts), body).await?;
        Ok(())
    }

    /// How a run ended; its container is removed without the caller waiting.
    async fn ended(
        &self,
        name: &str,
        ran: Result<Option<i64>, RuntimeError>,
    ) -> Result<Finished, RuntimeError> {
        let finished = match ran {
            Ok(Some(exit_code)) if exit_code != 0 && self.oom_killed(name).await => {
                Ok(Finished::OutOfMemory)
            }
            Ok(Some(exit_code)) => Ok(Finished::Exited { exit_code }),
            Ok(None) => Ok(Finished::TimedOut),
            Err(e) => Err(e),
        };
        self.remove_later(name);
        finished
    }

    /// Attaches (before the start, when `start`, so no output is missed),
    /// feeds stdin and streams the output until the container exits. `None`:
    /// killed at its timeout.
    async fn attach_and_run(
        &self,
        name: &str,
        start: bool,
        timeout: std::time::Duration,
        input: bytes::Bytes,
        out: &mut dyn Output,
    ) -> Result<Option<i64>, RuntimeError> {
        let opts = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let attached = self.client.attach_container(name, Some(opts)).await?;
        let mut stdin = attached.input;
        let mut output = attached.output;
        if start {
            self.client.start_container(name, None).await?;
        }
        // A function that never reads its stdin must not block the output.
        let feed = tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        });
        let run = async {
            while let Some(Ok(chunk)) = output.next().await {
                out.write(&String::from_utf8_lossy(&chunk.into_bytes()))
                    .await;
            }
            self.wait_exit(name).await
        };
        let ended = tokio::time::timeout(timeout, run).await;
        feed.abort();
        match ended {
            Ok(code) => code.map(Some),
            Err(_) => {
                let _ = self
                    .client
                    .kill_container(name, None::<KillContainerOptions>)
                    .await;
                Ok(None)
            }
        }
    }

    /// Removes a finished function container off the caller's path: the
    /// answer does not wait for the engine's cleanup. The janitor removes
    /// what this misses.
    fn remove_later(&self, name: &str) {
        let (engine, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move {
            if let Err(e) = super::docker::Runtime::remove(&engine, &name).await {
                tracing::warn!(container = %name, error = %e, "could not remove a function container");
            }
        });
    }

    pub(super) async fn function_containers_listed(
        &self,
    ) -> Result<Vec<super::FunctionContainer>, RuntimeError> {
        let list = self.labelled(NODE_LABEL).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_owned();
                let labels = c.labels?;
                Some(super::FunctionContainer {
                    name,
                    execution: labels.get(EXECUTION_LABEL).and_then(|id| id.parse().ok()),
                    node: labels.get(NODE_LABEL)?.clone(),
                })
            })
            .collect())
    }
}
