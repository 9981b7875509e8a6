//! Warm function containers (`function.warm: N`): each worker keeps up to N
//! containers per function created and started ahead, their shell waiting
//! for the first line of stdin. A request takes one (the engine's create and
//! start are then off its path), and a replacement is made at once. A
//! container is used for one request only, never again.
//!
//! The request's own variables cannot be set on a started container, so
//! they arrive on that first line, as shell assignments Norn quotes; the
//! body follows it. A pool is keyed by everything a container was made with
//! (image, command, memory, the app's env and secrets): after a deploy or a
//! secret change the old containers no longer match, are removed, and the
//! pool is made again.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use crate::adapters::OneOff;
use crate::state::WorkerState;

/// What a warm container runs before the function's command: read the
/// request line, apply it, forget it.
const SHIM: &str =
    "read -r NORN_REQUEST_LINE; eval \"$NORN_REQUEST_LINE\"; unset NORN_REQUEST_LINE\n";

/// The label that marks a warm container (its value: the function).
pub const WARM_LABEL: &str = "norn.function.warm";

#[derive(Default)]
pub struct WarmPools {
    pools: Mutex<Pools>,
    /// Woken whenever no container is being made.
    settled: tokio::sync::Notify,
}

#[derive(Default)]
struct Pools {
    by_function: HashMap<(String, String), Pool>,
    /// Containers being made, across pools.
    making: usize,
    /// The worker is stopping: nothing new is made, and what is still
    /// being made is removed when done.
    closed: bool,
}

#[derive(Default)]
struct Pool {
    /// What the ready containers were made with.
    key: u64,
    ready: Vec<String>,
    /// Being made now (counted so two requests do not both refill).
    making: usize,
}

/// Everything a warm container is made with, as one number.
pub fn key_of(template: &OneOff) -> u64 {
    let mut h = DefaultHasher::new();
    (&template.image, &template.command, &template.env).hash(&mut h);
    template.limits.map(|l| l.memory_mb).hash(&mut h);
    h.finish()
}

impl WarmPools {
    fn with<T>(&self, f: impl FnOnce(&mut Pools) -> T) -> T {
        f(&mut self.pools.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A ready container made with `key`, if any; also the containers made
    /// with an older key, which the caller removes.
    pub fn take(&self, app: &str, process: &str, key: u64) -> (Option<String>, Vec<String>) {
        self.with(|pools| {
            let pool = pools
                .by_function
                .entry((app.into(), process.into()))
                .or_default();
            let mut stale = Vec::new();
            if pool.key != key {
                stale = std::mem::take(&mut pool.ready);
                pool.key = key;
            }
            (pool.ready.pop(), stale)
        })
    }

    /// Hands back a container taken for a run that did not happen.
    pub fn put_back(&self, app: &str, process: &str, key: u64, name: String) -> Option<String> {
        self.with(|pools| {
            let closed = pools.closed;
            let pool = pools
                .by_function
                .entry((app.into(), process.into()))
                .or_default();
            if pool.key == key && !closed {
                pool.ready.push(name);
                None
            } else {
                Some(name)
            }
        })
    }

    /// How many containers to make now to reach `target`; they are counted
    /// as being made.
    fn reserve(&self, app: &str, process: &str, key: u64, target: usize) -> usize {
        self.with(|pools| {
            if pools.closed {
                return 0;
            }
            let pool = pools
                .by_function
                .entry((app.into(), process.into()))
                .or_default();
            if pool.key != key {
                return 0;
            }
            let want = target.saturating_sub(pool.ready.len() + pool.making);
            pool.making += want;
            pools.making += want;
            want
        })
    }

    /// A reserved container is made (or failed, `None`); returns it when it
    /// no longer belongs (the pool's key changed meanwhile, or the worker
    /// is stopping). The caller removes it, then calls [`WarmPools::settle`].
    fn made(&self, app: &str, process: &str, key: u64, name: Option<String>) -> Option<String> {
        self.with(|pools| {
            let closed = pools.closed;
            let pool = pools
                .by_function
                .entry((app.into(), process.into()))
                .or_default();
            pool.making = pool.making.saturating_sub(1);
            match name {
                Some(name) if pool.key == key && !closed => {
                    pool.ready.push(name);
                    None
                }
                other => other,
            }
        })
    }

    /// One reserved container is accounted for (kept, or removed).
    fn settle(&self) {
        let idle = self.with(|pools| {
            pools.making = pools.making.saturating_sub(1);
            pools.making == 0
        });
        if idle {
            self.settled.notify_waiters();
        }
    }

    /// Stops making containers and removes every ready one, then waits (up
    /// to `limit`) for those still being made to be removed too.
    pub async fn close(&self, state: &WorkerState, limit: std::time::Duration) {
        let ready: Vec<String> = self.with(|pools| {
            pools.closed = true;
            pools
                .by_function
                .drain()
                .flat_map(|(_, p)| p.ready)
                .collect()
        });
        remove(state, ready).await;
        let _ = tokio::time::timeout(limit, async {
            loop {
                let settled = self.settled.notified();
                if self.with(|pools| pools.making == 0) {
                    return;
                }
                settled.await;
            }
        })
        .await;
    }
}

/// The container template of a warm function: `template` is the run's
/// (app env, no request variables) with the shim in front of its command.
pub fn warm_template(template: &OneOff, node: &str) -> OneOff {
    let mut warm = template.clone();
    warm.command = format!("{SHIM}{}", template.command);
    let function = template
        .labels
        .get("norn.function")
        .cloned()
        .unwrap_or_default();
    warm.labels.insert(WARM_LABEL.into(), function);
    warm.labels
        .insert(crate::adapters::invoke::NODE_LABEL.into(), node.to_owned());
    warm
}

/// Tops the pool of `template`'s function up to `target`, in the background.
pub fn refill(
    state: Arc<WorkerState>,
    app: String,
    process: String,
    template: OneOff,
    target: u32,
) {
    let key = key_of(&template);
    let want = state.warm.reserve(&app, &process, key, target as usize);
    if want == 0 {
        return;
    }
    tokio::spawn(async move {
        for _ in 0..want {
            let mut job = warm_template(&template, &state.node_id);
            job.name = format!(
                "{app}_{process}_warm_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            );
            let made = match state.runtime.start_warm(&job).await {
                Ok(()) => Some(job.name),
                Err(e) => {
                    tracing::warn!(%app, function = %process, error = %e, "could not make a warm container");
                    None
                }
            };
            if let Some(stale) = state.warm.made(&app, &process, key, made) {
                remove(&state, vec![stale]).await;
            }
            state.warm.settle();
        }
    });
}

/// Removes containers that left a pool.
pub async fn remove(state: &WorkerState, names: Vec<String>) {
    for name in names {
        if let Err(e) = state.runtime.remove(&name).await {
            tracing::warn!(container = %name, error = %e, "could not remove a warm container");
        }
    }
}

/// The first line a warm container reads: the request's variables as shell
/// assignments, each value single-quoted (so nothing in it is interpreted)
/// and with no line break (the shell reads one line).
pub fn request_line(vars: &BTreeMap<String, String>) -> String {
    let mut line = String::from("export");
    for (name, value) in vars {
        let value = value.replace(['\n', '\r'], " ").replace('\'', "'\\''");
        line.push_str(&format!(" {name}='{value}'"));
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_quotes_what_the_caller_sent_and_stays_one_line() {
        let vars = BTreeMap::from([
            (
                "NORN_REQUEST_PATH".to_string(),
                "/a'b $(id) `x`".to_string(),
            ),
            (
                "NORN_REQUEST_QUERY".to_string(),
                "q=1\nrm -rf /".to_string(),
            ),
        ]);
        let line = request_line(&vars);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        // Run it the way the shim does, and print what the shell made of it.
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "{SHIM}printf '%s|%s' \"$NORN_REQUEST_PATH\" \"$NORN_REQUEST_QUERY\""
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(format!("{line}the body").as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "/a'b $(id) `x`|q=1 rm -rf /"
        );
    }
}
