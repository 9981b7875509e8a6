//! The bridge network release instances join, made safe when several
//! workers on one engine start at once.
//!
//! Docker 20.10 accepts two networks with one name unless the create request
//! asks it not to (`CheckDuplicate`, which Norn sends; newer engines always
//! refuse), after which every container start on that name fails as
//! ambiguous. So creation is also serialised across processes, by a Postgres
//! advisory lock keyed by the engine's ID and the network name (a lock file
//! for a process with no database yet), and duplicates left by anything else
//! are repaired: the
//! oldest Norn-labelled network is kept, the other empty Norn-labelled ones
//! are removed, and containers join the kept one by ID, never by name.

use std::collections::HashMap;

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptionsBuilder;

use super::docker::{DockerEngine, RuntimeError};

/// The label on every network Norn creates.
pub const MANAGED_LABEL: &str = "norn.managed";

/// Held while the network is looked up and created; released on drop.
enum CreationLock {
    Database(#[allow(dead_code)] sqlx::Transaction<'static, sqlx::Postgres>),
    File(#[allow(dead_code)] std::fs::File),
}

struct Candidate {
    id: String,
    created: Option<chrono::DateTime<chrono::FixedOffset>>,
    ours: bool,
}

impl DockerEngine {
    /// The ID of the network `self.network`, created when missing; with
    /// duplicates, the one Norn keeps.
    pub async fn ensure_network(&self) -> Result<String, RuntimeError> {
        let found = self.networks_named().await?;
        if let [only] = found.as_slice() {
            return Ok(only.id.clone());
        }
        // Held until this function returns (dropping it releases the lock).
        let _lock = self.lock_creation().await?;
        let found = self.networks_named().await?;
        match found.len() {
            0 => self.create_network().await,
            1 => Ok(found[0].id.clone()),
            _ => Ok(self.dedupe(found).await),
        }
    }

    /// Serialises network creation: a Postgres advisory lock across every
    /// process of the fleet on this engine, or, for a process with no
    /// database yet (`norn up` choosing its network), a lock file on this
    /// host, which is where such processes meet.
    async fn lock_creation(&self) -> Result<CreationLock, RuntimeError> {
        let key = format!("docker-network:{}:{}", self.engine_id, self.network);
        let failed = |e: &dyn std::fmt::Display| {
            RuntimeError::Failed(format!("locking network creation: {e}"))
        };
        if let Some(pool) = &self.lock_pool {
            let held = norn_shared::db::locks::exclusive(pool, &key)
                .await
                .map_err(|e| failed(&e))?;
            return Ok(CreationLock::Database(held));
        }
        let safe: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = std::env::temp_dir().join(format!("norn-{safe}.lock"));
        let held = tokio::task::spawn_blocking(move || super::filelock::exclusive(&path))
            .await
            .map_err(|e| failed(&e))?
            .map_err(|e| failed(&e))?;
        Ok(CreationLock::File(held))
    }

    /// The app network's gateway: the host's address as containers on it
    /// see it (where a loopback-only service on the host is *not* reachable).
    pub async fn gateway(&self) -> Result<String, RuntimeError> {
        let id = self.ensure_network().await?;
        let info = self.client.inspect_network(&id, None).await?;
        info.ipam
            .and_then(|ipam| ipam.config)
            .into_iter()
            .flatten()
            .find_map(|c| {
                let gateway = c.gateway.filter(|g| !g.is_empty() && !g.contains(':'));
                // Some engines leave the gateway out: the subnet's first address.
                gateway.or_else(|| c.subnet.as_deref().and_then(first_address))
            })
            .ok_or_else(|| {
                RuntimeError::Failed(format!("network {} has no IPv4 gateway", self.network))
            })
    }

    /// Networks whose name is exactly ours (the engine's name filter matches
    /// substrings), oldest first.
    async fn networks_named(&self) -> Result<Vec<Candidate>, RuntimeError> {
        let filters = HashMap::from([("name".to_string(), vec![self.network.clone()])]);
        let opts = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let mut found: Vec<Candidate> = self
            .client
            .list_networks(Some(opts))
            .await?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(self.network.as_str()))
            .filter_map(|n| {
                Some(Candidate {
                    id: n.id?,
                    created: n
                        .created
                        .as_deref()
                        .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok()),
                    ours: n.labels.is_some_and(|l| l.contains_key(MANAGED_LABEL)),
                })
            })
            .collect();
        found.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(found)
    }

    /// Creates the network, asking the engine to refuse a duplicate name.
    /// An engine that answers 409 has one already (made by a process that
    /// got past the lock, or by hand): that one is used.
    async fn create_network(&self) -> Result<String, RuntimeError> {
        let labels = HashMap::from([(MANAGED_LABEL.to_string(), "true".to_string())]);
        let created = match docker_socket() {
            Some(socket) => self.create_refusing_duplicates(&socket, &labels).await,
            // Not on a Unix socket: the client library's request, which
            // cannot ask for the check; the lock above still serialises Norn.
            None => {
                let req = NetworkCreateRequest {
                    name: self.network.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(labels),
                    ..Default::default()
                };
                match self.client.create_network(req).await {
                    Ok(made) => Ok(Some(made.id)),
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 409,
                        ..
                    }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        }?;
        match created {
            Some(id) => {
                tracing::info!(network = %self.network, %id, "created the app network");
                Ok(id)
            }
            None => {
                let found = self.networks_named().await?;
                match found.len() {
                    0 => Err(RuntimeError::Failed(format!(
                        "the engine refused to create network {} as a duplicate, but lists none",
                        self.network
                    ))),
                    1 => Ok(found[0].id.clone()),
                    _ => Ok(self.dedupe(found).await),
                }
            }
        }
    }

    /// `POST /networks/create` with `CheckDuplicate: true`, sent by hand:
    /// the client library (bollard 0.21) no longer sends the field, and
    /// Docker 20.10 only refuses a duplicate name when asked. Newer engines
    /// ignore the field and always refuse. `None` when refused (409).
    async fn create_refusing_duplicates(
        &self,
        socket: &std::path::Path,
        labels: &HashMap<String, String>,
    ) -> Result<Option<String>, RuntimeError> {
        use http_body_util::{BodyExt, Full};
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            RuntimeError::Failed(format!("creating network {}: {what}: {e}", self.network))
        };
        let body = serde_json::json!({
            "Name": self.network,
            "Driver": "bridge",
            "CheckDuplicate": true,
            "Labels": labels,
        });
        let version = self.client.client_version();
        let request = hyper::Request::post(format!(
            "/v{}.{}/networks/create",
            version.major_version, version.minor_version
        ))
        .header("Host", "docker")
        .header("Content-Type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .map_err(|e| failed("request", &e))?;
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| failed(&socket.display().to_string(), &e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| failed("handshake", &e))?;
        let conn = tokio::spawn(conn);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed("request", &e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed("response", &e))?
            .to_bytes();
        conn.abort();
        if status == hyper::StatusCode::CONFLICT {
            return Ok(None);
        }
        let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        match answer.get("Id").and_then(|id| id.as_str()) {
            Some(id) if status.is_success() => Ok(Some(id.to_owned())),
            _ => Err(RuntimeError::Failed(format!(
                "creating network {}: the engine answered {status}: {}",
                self.network,
                answer
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("no message")
            ))),
        }
    }

    /// Keeps the oldest Norn-labelled network (else the oldest) and removes
    /// the other Norn-labelled ones that no container uses.
    async fn dedupe(&self, found: Vec<Candidate>) -> String {
        let keep = found
            .iter()
            .find(|c| c.ours)
            .unwrap_or(&found[0])
            .id
            .clone();
        for extra in found.iter().filter(|c| c.ours && c.id != keep) {
            let in_use = self
                .client
                .inspect_network(&extra.id, None)
                .await
                .map(|n| n.containers.is_some_and(|c| !c.is_empty()))
                .unwrap_or(true);
            if in_use {
                tracing::warn!(network = %self.network, id = %extra.id, "duplicate network still has containers; left in place");
                continue;
            }
            match self.client.remove_network(&extra.id).await {
                Ok(()) => {
                    tracing::info!(network = %self.network, id = %extra.id, kept = %keep, "removed a duplicate network")
                }
                Err(e) => {
                    tracing::warn!(network = %self.network, id = %extra.id, error = %e, "could not remove a duplicate network")
                }
            }
        }
        keep
    }
}

/// The engine's Unix socket, as the client library finds it (`DOCKER_HOST`,
/// else the default path); `None` when the engine is reached otherwise.
fn docker_socket() -> Option<std::path::PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(Into::into),
        _ => Some("/var/run/docker.sock".into()),
    }
}

/// The first host address of an IPv4 subnet (`172.18.0.0/16` → `172.18.0.1`).
fn first_address(subnet: &str) -> Option<String> {
    let net: std::net::Ipv4Addr = subnet.split('/').next()?.parse().ok()?;
    Some(std::net::Ipv4Addr::from(u32::from(net).checked_add(1)?).to_string())
}

#[cfg(test)]
mod gateway_tests {
    #[test]
    fn a_subnets_first_address_is_its_gateway() {
        assert_eq!(
            super::first_address("172.18.0.0/16").as_deref(),
            Some("172.18.0.1")
        );
        assert_eq!(super::first_address("fd00::/64"), None);
        assert_eq!(super::first_address("nonsense"), None);
    }
}

#[cfg(test)]
mod duplicate_tests {
    use super::super::docker::{Defaults, DockerEngine};

    /// Past every lock (as a process of another fleet, or a second host
    /// sharing the engine, would be), the engine itself refuses the second
    /// network, and Norn uses the first.
    #[tokio::test]
    async fn the_engine_is_asked_to_refuse_a_duplicate_network() {
        let name = format!("norn-test-dupcheck-{}", uuid::Uuid::new_v4().simple());
        let defaults = Defaults {
            memory_mb: 64,
            pids: 64,
        };
        let engine = DockerEngine::connect(&name, None, defaults).await.unwrap();
        let first = engine.create_network().await;
        let second = engine.create_network().await;
        let found: Vec<String> = engine
            .networks_named()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        for id in &found {
            let _ = engine.client.remove_network(id).await;
        }
        let (first, second) = (first.unwrap(), second.unwrap());
        assert_eq!(found.len(), 1, "networks named {name}: {found:?}");
        assert_eq!(
            first, second,
            "the second create did not return the first network"
        );
    }
}
