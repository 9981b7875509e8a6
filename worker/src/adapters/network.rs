//! The bridge network release instances join, made safe when several
//! workers on one engine start at once.
//!
//! Docker 20.10 accepts two networks with one name (the API's duplicate check
//! is off by default and gone from newer API versions), after which every
//! container start on that name fails as ambiguous. So creation is serialised
//! across processes by a Postgres advisory lock keyed by the engine's ID and
//! the network name, and duplicates left by anything else are repaired: the
//! oldest Norn-labelled network is kept, the other empty Norn-labelled ones
//! are removed, and containers join the kept one by ID, never by name.

use std::collections::HashMap;

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptionsBuilder;

use super::docker::{DockerEngine, RuntimeError};

/// The label on every network Norn creates.
pub const MANAGED_LABEL: &str = "norn.managed";

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
        // Held until this function returns (dropping the transaction releases it).
        let _lock = match &self.lock_pool {
            Some(pool) => Some(
                norn_shared::db::locks::exclusive(
                    pool,
                    &format!("docker-network:{}:{}", self.engine_id, self.network),
                )
                .await
                .map_err(|e| RuntimeError::Failed(format!("locking network creation: {e}")))?,
            ),
            None => None,
        };
        let found = self.networks_named().await?;
        match found.len() {
            0 => self.create_network().await,
            1 => Ok(found[0].id.clone()),
            _ => Ok(self.dedupe(found).await),
        }
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

    async fn create_network(&self) -> Result<String, RuntimeError> {
        let req = NetworkCreateRequest {
            name: self.network.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(MANAGED_LABEL.into(), "true".into())])),
            ..Default::default()
        };
        let created = self.client.create_network(req).await?;
        tracing::info!(network = %self.network, id = %created.id, "created the app network");
        Ok(created.id)
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
