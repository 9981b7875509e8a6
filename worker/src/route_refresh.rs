//! Routes follow containers the engine restarted. A release instance runs
//! with `restart: unless-stopped`; when Docker restarts it (a crash, the
//! daemon restarting) it may come back with another address on the app
//! network, and a route pinned to the old one would send the app's traffic
//! to whatever container takes that address next, possibly another app's.
//! Every worker compares the routes with the instances its engine runs and
//! repoints a route whose instances are all here but at other addresses.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use norn_shared::db::routes::{self, Route};
use tokio::sync::watch;

use crate::WorkerError;
use crate::adapters::Running;
use crate::state::WorkerState;

/// How often routes are compared with the running instances.
const EVERY: Duration = Duration::from_secs(5);

pub async fn run(state: Arc<WorkerState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = refresh(&state).await {
            tracing::debug!(error = %e, "could not compare routes with running instances");
        }
    }
}

async fn refresh(state: &WorkerState) -> Result<(), WorkerError> {
    let running = state.runtime.running().await?;
    if running.is_empty() {
        return Ok(());
    }
    let all = {
        let mut conn = state.pool.acquire().await?;
        routes::all(&mut conn).await?
    };
    for route in all {
        let Some(upstream) = repointed(&route, &running) else {
            continue;
        };
        if routes::replace_upstream(&state.pool, &route, &upstream).await? {
            tracing::warn!(
                app = %route.app, process = %route.process, deployment.id = %route.deployment_id,
                from = %route.upstream, to = %upstream,
                "an instance came back at another address; its route follows it"
            );
        }
    }
    Ok(())
}

/// The route's new upstream, when every one of its instances runs on this
/// engine and the addresses differ from the route's. `None` when nothing
/// changed, or when some instances are elsewhere (another host) or down
/// (restarting): then this worker cannot tell the whole set.
fn repointed(route: &Route, running: &[Running]) -> Option<String> {
    let current: Vec<(&str, &str)> = route
        .upstream
        .split(',')
        .filter_map(|a| a.rsplit_once(':'))
        .collect();
    let port = current.first()?.1;
    let ips: BTreeSet<&str> = running
        .iter()
        .filter(|r| r.deployment == route.deployment_id && r.process == route.process)
        .map(|r| r.ip.as_str())
        .collect();
    if ips.len() != current.len() {
        return None;
    }
    let old: BTreeSet<&str> = current.iter().map(|(ip, _)| *ip).collect();
    if ips == old {
        return None;
    }
    Some(
        ips.iter()
            .map(|ip| format!("{ip}:{port}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(upstream: &str) -> Route {
        Route {
            app: "a".into(),
            process: "web".into(),
            upstream: upstream.into(),
            deployment_id: "d1".into(),
        }
    }

    fn running(deployment: &str, ip: &str) -> Running {
        Running {
            deployment: deployment.into(),
            process: "web".into(),
            ip: ip.into(),
        }
    }

    #[test]
    fn a_moved_instance_is_followed_and_an_unmoved_one_is_left() {
        let r = route("10.0.0.2:8080,10.0.0.3:8080");
        let moved = [running("d1", "10.0.0.3"), running("d1", "10.0.0.9")];
        assert_eq!(
            repointed(&r, &moved).as_deref(),
            Some("10.0.0.3:8080,10.0.0.9:8080")
        );
        let same = [running("d1", "10.0.0.3"), running("d1", "10.0.0.2")];
        assert_eq!(repointed(&r, &same), None);
    }

    #[test]
    fn a_route_whose_instances_are_not_all_here_is_left() {
        let r = route("10.0.0.2:8080,10.0.0.3:8080");
        // One restarting (not running) or on another host; another deployment's.
        let partial = [running("d1", "10.0.0.9"), running("d2", "10.0.0.3")];
        assert_eq!(repointed(&r, &partial), None);
    }
}
