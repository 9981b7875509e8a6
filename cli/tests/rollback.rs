//! Rollback: manual (default target, named target, nothing to go back to)
//! and automatic (a release that fails its health path after the switch).
//! Real Postgres, Docker and git.

mod common;

use common::{AppRepo, Harness, unique_app};
use serde_json::{Value, json};

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

    let (code, body) = h
        .post(&format!("/api/apps/{app}/rollback"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["target"], v1.as_str());
    let id = body["id"].as_str().unwrap().to_owned();
    let d = h.wait_terminal(&id).await;
    assert_eq!(d["status"], "deployed", "{d}");
    assert_eq!(d["kind"], "rollback");
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");
    // No build, no migration: those steps are skipped and say why.
    for step in d["steps"].as_array().unwrap().iter().take(5) {
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
    assert_eq!(h.wait_terminal(&again).await["status"], "deployed");
    assert_eq!(h.fetch(&app).await.unwrap(), "v2");
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
    let (code, _) = h
        .post(
            &format!("/api/apps/{}/rollback", unique_app("ghost")),
            json!({}),
        )
        .await;
    assert_eq!(code, 404);
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

#[tokio::test]
async fn a_release_unhealthy_after_the_switch_is_rolled_back_automatically() {
    let h = Harness::start().await;
    let (app, v1) = app_with_flaky_v2(&h, "autorb", true).await;
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
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");
    let (_, first) = h.get(&format!("/api/deployments/{v1}")).await;
    assert_eq!(first["status"], "deployed");

    // With autoRollback off the new release stays live, and the step log says so.
    let (app, _) = app_with_flaky_v2(&h, "noautorb", false).await;
    let v2 = h.deploy(&app, "HEAD").await;
    let d = h.wait_terminal(&v2).await;
    assert_eq!(d["status"], "deployed", "{d}");
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
    assert_eq!(h.fetch(&app).await.unwrap(), "v2");
}
