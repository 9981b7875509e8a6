//! A route follows a release instance that comes back at another address.
//! The instance is stopped, a squatter container (same image, serving
//! another page) is started on the app network to take addresses, and the
//! instance is started again; the ingress must serve the app's own page,
//! not the squatter's and not a 502.

mod common;

use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use common::{Harness, eventually};

async fn ip_of(docker: &bollard::Docker, name: &str) -> String {
    let info = docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .unwrap();
    info.network_settings
        .and_then(|n| n.networks)
        .and_then(|mut n| n.remove("norn-test"))
        .and_then(|e| e.ip_address)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_follows_an_instance_that_comes_back_at_another_address() {
    let h = Harness::start().await;
    let (app, _repo) = h.app_serving_v1("moved").await;
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("norn.app={app}"), "norn.process=web".to_string()],
    )]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    assert_eq!(list.len(), 1, "one instance of v1");
    let instance = list[0].names.as_ref().unwrap()[0]
        .trim_start_matches('/')
        .to_owned();
    let image = list[0].image.clone().unwrap();
    let before = ip_of(&docker, &instance).await;

    // The instance goes away; a squatter may take its address; it comes back.
    docker
        .stop_container(
            &instance,
            None::<bollard::query_parameters::StopContainerOptions>,
        )
        .await
        .unwrap();
    let squatter = format!("{app}-squatter");
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&squatter).build()),
            ContainerCreateBody {
                image: Some(image),
                cmd: Some(
                    [
                        "/bin/busybox",
                        "sh",
                        "-c",
                        "busybox mkdir -p /sq && echo squatter > /sq/index.html && busybox httpd -f -p 8080 -h /sq",
                    ]
                    .map(String::from)
                    .to_vec(),
                ),
                // Labelled with the app, so the test's cleanup removes it too.
                labels: Some([("norn.app".to_string(), app.clone())].into()),
                host_config: Some(HostConfig {
                    network_mode: Some("norn-test".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    docker.start_container(&squatter, None).await.unwrap();
    docker.start_container(&instance, None).await.unwrap();
    let after = ip_of(&docker, &instance).await;
    assert_ne!(
        before, after,
        "the instance came back at its old address; this test moves nothing"
    );

    eventually(
        Duration::from_secs(60),
        "the ingress to serve v1 from the instance's new address",
        || async { (h.fetch(&app).await.ok()?.trim() == "v1").then_some(()) },
    )
    .await;
    let (_, body) = h.get(&format!("/api/apps/{app}")).await;
    assert_eq!(
        body["routes"][0]["upstream"],
        format!("{after}:8080"),
        "{body}"
    );
    docker
        .remove_container(
            &squatter,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
        .unwrap();
}
