//! The app network on a host where several workers start at once, or where
//! duplicates already exist (Docker 20.10 accepts two networks with one name).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptionsBuilder;
use common::procs::{self, ProcApi};
use common::{AppRepo, eventually, spec, unique_app};

/// IDs of the networks named exactly `name`.
async fn networks_named(docker: &Docker, name: &str) -> Vec<String> {
    let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
    docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.name.as_deref() == Some(name))
        .filter_map(|n| n.id)
        .collect()
}

/// Removes the test's network (after its containers) whatever the outcome.
struct NetworkGuard(String);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let name = self.0.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let docker = Docker::connect_with_local_defaults().unwrap();
                for c in common::all_containers().await {
                    let on_it = c
                        .network_settings
                        .and_then(|s| s.networks)
                        .is_some_and(|n| n.contains_key(&name));
                    if on_it && let Some(id) = c.id {
                        let opts =
                            bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                                .force(true)
                                .build();
                        let _ = docker.remove_container(&id, Some(opts)).await;
                    }
                }
                for id in networks_named(&docker, &name).await {
                    let _ = docker.remove_network(&id).await;
                }
            });
        })
        .join()
        .unwrap();
    }
}

/// Registers an app and deploys it with the running workers; asserts it serves.
async fn deploy_one(api: &ProcApi, tmp: &std::path::Path) {
    let app = unique_app("net");
    let repo = AppRepo::create(tmp, &app);
    let (status, body) = api.post("/api/apps", spec(&app, &repo, None)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api
        .post(
            &format!("/api/apps/{app}/deploy"),
            serde_json::json!({"ref": "HEAD"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let done = api.wait_terminal(&id, Duration::from_secs(180)).await;
    assert_eq!(done["status"], "deployed", "{done}");
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_workers_starting_at_once_create_one_network_and_deploy() {
    let docker = Docker::connect_with_local_defaults().unwrap();
    let network = unique_app("norn-test-race");
    let _guard = NetworkGuard(network.clone());
    assert!(networks_named(&docker, &network).await.is_empty());
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = procs::free_port();
    let env = [("NORN_DOCKER_NETWORK", network.as_str())];
    let _api = procs::spawn_with("norn-api", &db, tmp.path(), "api", port, &env);
    let workers: Vec<_> = (0..8)
        .map(|i| procs::spawn_with("norn-worker", &db, tmp.path(), &format!("w{i}"), 0, &env))
        .collect();
    let api = ProcApi::new(&format!("http://127.0.0.1:{port}")).await;
    // A worker registers as ready only after it made sure of the network.
    eventually(Duration::from_secs(60), "eight workers ready", || async {
        let nodes = api.get("/api/cluster/nodes").await;
        let ready = nodes
            .as_array()?
            .iter()
            .filter(|n| n["role"] == "worker" && n["status"] == "ready")
            .count();
        (ready == 8).then_some(())
    })
    .await;
    let found = networks_named(&docker, &network).await;
    assert_eq!(found.len(), 1, "networks named {network}: {found:?}");
    deploy_one(&api, tmp.path()).await;
    assert_eq!(networks_named(&docker, &network).await, found);
    drop(workers);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_networks_are_repaired_and_a_deploy_succeeds() {
    let docker = Docker::connect_with_local_defaults().unwrap();
    let network = unique_app("norn-test-dup");
    let _guard = NetworkGuard(network.clone());
    let mut made = Vec::new();
    for _ in 0..2 {
        let created = docker
            .create_network(NetworkCreateRequest {
                name: network.clone(),
                driver: Some("bridge".into()),
                labels: Some(HashMap::from([("norn.managed".into(), "true".into())])),
                ..Default::default()
            })
            .await;
        match created {
            Ok(net) => made.push(net.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                eprintln!(
                    "skipped: this engine refuses duplicate network names, so none can exist"
                );
                return;
            }
            Err(e) => panic!("creating {network}: {e}"),
        }
    }
    assert_eq!(networks_named(&docker, &network).await.len(), 2);
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = procs::free_port();
    let env = [("NORN_DOCKER_NETWORK", network.as_str())];
    let _api = procs::spawn_with("norn-api", &db, tmp.path(), "api", port, &env);
    let _worker = procs::spawn_with("norn-worker", &db, tmp.path(), "w", 0, &env);
    let api = ProcApi::new(&format!("http://127.0.0.1:{port}")).await;
    deploy_one(&api, tmp.path()).await;
    let left = networks_named(&docker, &network).await;
    assert_eq!(
        left,
        vec![made[0].clone()],
        "the oldest Norn network ({}) must be the one kept",
        made[0]
    );
}
