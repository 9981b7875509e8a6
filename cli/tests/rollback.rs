//! Rollback: manual (default target, named target, nothing to go back to)
//! and automatic (a release that fails its health path after the switch).
//! Real Postgres, Docker and git.

mod common;

use std::time::Duration;

use bollard::models::ContainerSummaryStateEnum;
use common::{AppRepo, Harness, all_containers, remove_containers, unique_app};
use serde_json::{Value, json};

/// Containers of `app` as Docker lists them with `all = true` (stopped ones
/// included): (deployment label, image, running).
async fn app_containers(app: &str) -> Vec<(String, String, bool)> {
    all_containers()
        .await
        .into_iter()
        .filter(|c| c.labels.as_ref().and_then(|l| l.get("norn.app")) == Some(&app.to_owned()))
        .map(|c| {
            (
                c.labels
                    .as_ref()
                    .and_then(|l| l.get("norn.deployment").cloned())
                    .unwrap_or_default(),
                c.image.clone().unwrap_or_default(),
                c.state == Some(ContainerSummaryStateEnum::RUNNING),
            )
        })
        .collect()
}

/// `app` serves `deployment` only: the route points at it, its container is
/// the app's only one (running or stopped) and runs `image`, and the ingress
/// answers `body`. The replaced release's containers are removed right after
/// the deployment is recorded, hence the wait.
async fn serves_only(h: &Harness, app: &str, deployment: &str, image: &str, body: &str) {
    let routed: Vec<String> =
        sqlx::query_scalar("SELECT deployment_id FROM app_routes WHERE app = $1")
            .bind(app)
            .fetch_all(&h.pool)
            .await
            .unwrap();
    assert_eq!(routed, [deployment], "{app}: routes");
    let want = vec![(deployment.to_owned(), image.to_owned(), true)];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = app_containers(app).await;
        if left == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{app}: containers {left:?}, want only {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        assert_eq!(h.fetch(app).await.unwrap(), body);
    }
}

#[tokio::test]
async fn manual_rollback_puts_the_previous_release_back_without_building() {
    let h = Harness::start().await;
    let (app, repo) = h.app_serving_v1("rollback").await;
    // Nothing deployed before v1: nothing to roll back to.
    let (code, body) = h
        .post(&format!("/api/apps/{app}/rollback"), json!({}))
        .await;
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no deployed release before")
    );

    let (_, list) = h.get(&format!("/api/deployments?app={app}")).await;
    let v1 = list[0]["id"].as_str().unwrap().to_owned();
    repo.commit("v2");
    let v2 = h.deploy(&app, "HEAD").await;
    assert_eq!(h.wait_terminal(&v2).await["status"], "deployed");
    assert_eq!(h.fetch(&app).await.unwrap(), "v2");

    let (_, first) = h.get(&format!("/api/deployments/{v1}")).await;
    let (_, second) = h.get(&format!("/api/deployments/{v2}")).await;
    let (v1_image, v2_image) = (
        first["imageTag"].as_str().unwrap().to_owned(),
        second["imageTag"].as_str().unwrap().to_owned(),
    );
    assert_ne!(v1_image, v2_image);

    // Without building: the source is gone, so a clone or a build would fail.
    let moved = repo.dir.with_extension("moved");
    std::fs::rename(&repo.dir, &moved).unwrap();

    let (code, body) = h
        .post(&format!("/api/apps/{app}/rollback"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["target"], v1.as_str());
    let id = body["id"].as_str().unwrap().to_owned();
    let d = h.wait_terminal(&id).await;
    assert_eq!(d["status"], "deployed", "{d}");
    assert_eq!(d["kind"], "rollback");
    assert_eq!(d["imageTag"], v1_image.as_str(), "{d}");
    assert_eq!(d["commitSha"], first["commitSha"], "{d}");
    // v1's image runs again in a container of the rollback, and nothing of v2
    // is left.
    serves_only(&h, &app, &id, &v1_image, "v1").await;
    // No build, no migration: those steps are skipped and say why.
    let steps = d["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names[..6],
        ["forge", "clone", "build", "test", "snapshot", "migrate"]
    );
    for step in &steps[1..6] {
        assert_eq!(step["status"], "skipped", "{step}");
        assert!(
            step["output"].as_str().unwrap().starts_with("rollback to"),
            "{step}"
        );
    }
    let (_, replaced) = h.get(&format!("/api/deployments/{v2}")).await;
    assert_eq!(replaced["status"], "rolled_back");

    // A named target; bad and foreign ids are refused clearly.
    let (code, body) = h
        .post(
            &format!("/api/apps/{app}/rollback"),
            json!({"deploymentId": v2}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let again = body["id"].as_str().unwrap().to_owned();
    let d = h.wait_terminal(&again).await;
    assert_eq!(d["status"], "deployed", "{d}");
    assert_eq!(d["imageTag"], v2_image.as_str(), "{d}");
    serves_only(&h, &app, &again, &v2_image, "v2").await;
    std::fs::rename(&moved, &repo.dir).unwrap();
    let (code, body) = h
        .post(
            &format!("/api/apps/{app}/rollback"),
            json!({"deploymentId": "nope"}),
        )
        .await;
    assert_eq!((code, body["field"].clone()), (400, json!("deploymentId")));
    let (code, _) = h
        .post(
            &format!("/api/apps/{app}/rollback"),
            json!({"deploymentId": uuid::Uuid::new_v4()}),
        )
        .await;
    assert_eq!(code, 404);
    // A deployed release of another app is not a target for this one.
    let foreign = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO deployments (id, app, commit_sha, image_tag, status, finished_at)
         VALUES ($1, $2, $3, $4, 'deployed', now())",
    )
    .bind(&foreign)
    .bind(unique_app("other"))
    .bind(first["commitSha"].as_str())
    .bind(&v1_image)
    .execute(&h.pool)
    .await
    .unwrap();
    let (code, body) = h
        .post(
            &format!("/api/apps/{app}/rollback"),
            json!({"deploymentId": foreign}),
        )
        .await;
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not found"),
        "{body}"
    );
    let (code, _) = h
        .post(
            &format!("/api/apps/{}/rollback", unique_app("ghost")),
            json!({}),
        )
        .await;
    assert_eq!(code, 404);
    // Refusals queued nothing: still the named rollback serves.
    serves_only(&h, &app, &again, &v2_image, "v2").await;
    remove_containers(&app).await;
}

/// Health answered by a CGI script: `ok` always, or (`flaky`) only the
/// first time it is asked, then 500.
fn write_health(repo: &AppRepo, flaky: bool) {
    use std::os::unix::fs::PermissionsExt;
    let dir = repo.dir.join("www/cgi-bin");
    std::fs::create_dir_all(&dir).unwrap();
    // The image is `FROM scratch` (no /tmp, no printf): a marker next to the
    // script remembers the first probe; `echo` is a shell builtin.
    let script = if flaky {
        "#!/bin/sh\nif [ -e /www/cgi-bin/.probed ]; then\n  echo 'HTTP/1.1 500 Internal Server Error'; echo; echo failing\n\
         else\n  : > /www/cgi-bin/.probed\n  echo 'HTTP/1.1 200 OK'; echo; echo ok\nfi\n"
    } else {
        "#!/bin/sh\necho 'HTTP/1.1 200 OK'; echo; echo ok\n"
    };
    let path = dir.join("health");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn cgi_spec(app: &str, repo: &AppRepo, auto_rollback: bool) -> Value {
    json!({
        "name": app,
        "repo": {"url": repo.url()},
        "processes": {"web": {"port": 8080, "health": {"path": "/cgi-bin/health", "timeout": "2s"}}},
        "deployPolicy": {"autoRollback": auto_rollback},
    })
}

async fn app_with_flaky_v2(h: &Harness, prefix: &str, auto_rollback: bool) -> (String, String) {
    let app = unique_app(prefix);
    let repo = AppRepo::create(h.tmp.path(), &app);
    write_health(&repo, false);
    repo.commit("v1");
    let (code, body) = h
        .post("/api/apps", cgi_spec(&app, &repo, auto_rollback))
        .await;
    assert_eq!(code, 201, "{body}");
    let v1 = h.deploy(&app, "HEAD").await;
    assert_eq!(h.wait_terminal(&v1).await["status"], "deployed");
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");
    write_health(&repo, true);
    repo.commit("v2");
    (app, v1)
}

/// Counts route changes (`NOTIFY norn_routes`) of one app while it runs.
struct RouteChanges {
    listener: sqlx::postgres::PgListener,
    app: String,
}

impl RouteChanges {
    async fn watch(h: &Harness, app: &str) -> Self {
        let mut listener = sqlx::postgres::PgListener::connect_with(&h.pool)
            .await
            .unwrap();
        listener.listen("norn_routes").await.unwrap();
        Self {
            listener,
            app: app.to_owned(),
        }
    }

    /// Waits until `want` changes of the app arrived, then a quiet second for
    /// any extra one; returns how many arrived.
    async fn count(mut self, want: usize) -> usize {
        let mut seen = 0;
        let mut quiet = Duration::from_secs(10);
        while let Ok(Ok(n)) = tokio::time::timeout(quiet, self.listener.recv()).await {
            if n.payload() == self.app {
                seen += 1;
                if seen >= want {
                    quiet = Duration::from_secs(1);
                }
            }
        }
        seen
    }
}

async fn image_of(h: &Harness, deployment: &str) -> String {
    let (_, d) = h.get(&format!("/api/deployments/{deployment}")).await;
    d["imageTag"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_release_unhealthy_after_the_switch_is_rolled_back_automatically() {
    let h = Harness::start().await;
    let (app, v1) = app_with_flaky_v2(&h, "autorb", true).await;
    let v1_image = image_of(&h, &v1).await;
    let routes = RouteChanges::watch(&h, &app).await;
    let v2 = h.deploy(&app, "HEAD").await;
    let d = h.wait_terminal(&v2).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["failedStep"], "healthy");
    let error = d["error"].as_str().unwrap();
    assert!(error.contains("unhealthy after the switch"), "{error}");
    assert!(
        error.contains(&format!("traffic is back on deployment {v1}")),
        "{error}"
    );
    // The routes went to v2 (the switch) and back (the rollback): two changes.
    assert_eq!(routes.count(2).await, 2, "route changes during {v2}");
    // v1 serves again, from its own container; v2's containers are removed.
    serves_only(&h, &app, &v1, &v1_image, "v1").await;
    let (_, first) = h.get(&format!("/api/deployments/{v1}")).await;
    assert_eq!(first["status"], "deployed");
    remove_containers(&app).await;

    // With autoRollback off the new release stays live, and the step log says so.
    let (app, _) = app_with_flaky_v2(&h, "noautorb", false).await;
    let routes = RouteChanges::watch(&h, &app).await;
    let v2 = h.deploy(&app, "HEAD").await;
    let d = h.wait_terminal(&v2).await;
    assert_eq!(d["status"], "deployed", "{d}");
    assert_eq!(routes.count(1).await, 1, "route changes during {v2}");
    let healthy = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "healthy")
        .unwrap()
        .clone();
    assert!(
        healthy["output"]
            .as_str()
            .unwrap()
            .contains("autoRollback is off"),
        "{healthy}"
    );
    let v2_image = d["imageTag"].as_str().unwrap().to_owned();
    serves_only(&h, &app, &v2, &v2_image, "v2").await;
    remove_containers(&app).await;
}

/// The tags of `app`'s images on the engine.
async fn app_images(app: &str) -> Vec<String> {
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let filters = std::collections::HashMap::from([("reference", vec![format!("{app}:*")])]);
    let mut tags: Vec<String> = docker
        .list_images(Some(
            bollard::query_parameters::ListImagesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap()
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect();
    tags.sort();
    tags
}

#[tokio::test]
async fn cleanup_keeps_the_newest_releases_images_and_removes_older_ones() {
    let h = Harness::start_with(|c| c.keep_images = 2).await;
    let (app, repo) = h.app_serving_v1("images").await;
    let mut tags = Vec::new();
    for version in ["v2", "v3"] {
        repo.commit(version);
        let id = h.deploy(&app, "HEAD").await;
        let d = h.wait_terminal(&id).await;
        assert_eq!(d["status"], "deployed", "{d}");
        tags.push(d["imageTag"].as_str().unwrap().to_owned());
        if version == "v3" {
            let cleanup = d["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["step"] == "cleanup")
                .unwrap()["output"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(cleanup.contains("removed image"), "{cleanup}");
        }
    }
    // v1's image is gone from the engine; v2 (the rollback target) and v3 stay.
    tags.sort();
    assert_eq!(app_images(&app).await, tags);
    let (code, body) = h
        .post(&format!("/api/apps/{app}/rollback"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    let d = h.wait_terminal(body["id"].as_str().unwrap()).await;
    assert_eq!(d["status"], "deployed", "{d}");
    assert_eq!(h.fetch(&app).await.unwrap(), "v2");
    remove_containers(&app).await;
}
