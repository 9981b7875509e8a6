//! The fleet registry with real processes: every role registers, a killed
//! worker shows as lost, a drained worker finishes what it holds and claims
//! nothing new, a stopped one is removed.

mod common;

use std::time::Duration;

use common::procs::*;
use common::*;
use serde_json::{Value, json};

struct Api(ProcApi);

impl Api {
    async fn node(&self, name: &str) -> Option<Value> {
        let list = self.0.get("/api/cluster/nodes").await;
        list.as_array()?.iter().find(|n| n["name"] == name).cloned()
    }

    async fn wait_node(&self, name: &str, status: &str, limit: Duration) -> Value {
        eventually(limit, &format!("{name} {status}"), || async {
            self.node(name).await.filter(|n| n["status"] == status)
        })
        .await
    }
}

#[tokio::test]
async fn nodes_register_drain_get_lost_and_leave() {
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _api = spawn("norn-api", &db, tmp.path(), "n-api", port);
    let _scheduler = spawn("norn-scheduler", &db, tmp.path(), "n-scheduler", 0);
    let w1 = spawn("norn-worker", &db, tmp.path(), "n-worker-1", 0);
    let mut w2 = spawn("norn-worker", &db, tmp.path(), "n-worker-2", 0);
    let api = Api(ProcApi::new(&format!("http://127.0.0.1:{port}")).await);
    for (name, role) in [
        ("n-api", "api"),
        ("n-scheduler", "scheduler"),
        ("n-worker-1", "worker"),
        ("n-worker-2", "worker"),
    ] {
        let n = api.wait_node(name, "ready", Duration::from_secs(30)).await;
        assert_eq!(n["role"], role, "{n}");
        assert!(n["pid"].as_i64().unwrap() > 0, "{n}");
    }
    // Workers register with their engine's state, so health knows the engine
    // from their first moment, not from their second heartbeat (5 s later).
    let health = api.0.get("/api/health").await;
    assert_eq!(health["services"]["docker"]["status"], "up", "{health}");

    // A worker killed outright stops beating: shown lost (checked below).
    w2.0.kill().unwrap();
    w2.0.wait().unwrap();

    let app = unique_app("drain");
    let repo = AppRepo::create(tmp.path(), &app);
    let (code, body) = api
        .0
        .post("/api/apps", spec(&app, &repo, Some("busybox sleep 4")))
        .await;
    assert_eq!(code, 201, "{body}");
    let (_, body) = api
        .0
        .post(&format!("/api/apps/{app}/deploy"), json!({}))
        .await;
    let held = body["id"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(60),
        "deploy in its test step",
        || async { (api.0.deployment(&held).await["status"] == "testing").then_some(()) },
    )
    .await;

    // Drain worker 1 while it holds that deploy.
    let w1_id = api.node("n-worker-1").await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, body) = api
        .0
        .post(&format!("/api/cluster/nodes/{w1_id}/drain"), json!({}))
        .await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("draining")),
        "{body}"
    );
    let (code, _) = api
        .0
        .post(&format!("/api/cluster/nodes/{w1_id}/drain"), json!({}))
        .await;
    assert_eq!(code, 409);
    // Once it has written a heartbeat since, it has seen the request.
    let since = body["lastHeartbeatAt"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(20),
        "a heartbeat after the drain",
        || async {
            let n = api.node("n-worker-1").await?;
            (n["lastHeartbeatAt"].as_str()? > since.as_str()).then_some(())
        },
    )
    .await;
    let (_, body) = api
        .0
        .post(&format!("/api/apps/{app}/deploy"), json!({}))
        .await;
    let waiting = body["id"].as_str().unwrap().to_owned();

    // What it held finishes; nothing new is claimed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let d = api.0.deployment(&held).await;
        if d["status"] == "deployed" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held deploy never finished on the draining worker: {d}\n{}",
            api.0.get("/api/cluster/nodes").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let n = api
        .wait_node("n-worker-1", "draining", Duration::from_secs(5))
        .await;
    eventually(
        Duration::from_secs(20),
        "running jobs back to 0",
        || async {
            let n = api.node("n-worker-1").await?;
            (n["runningJobs"] == 0).then_some(())
        },
    )
    .await;
    let d = api.0.deployment(&waiting).await;
    assert_eq!(
        (d["status"].as_str(), d["attempts"].as_i64()),
        (Some("queued"), Some(0)),
        "{d} {n}"
    );

    // The killed one is lost by now or soon; a fresh worker takes the queued deploy.
    api.wait_node("n-worker-2", "lost", Duration::from_secs(60))
        .await;
    let mut w3 = spawn("norn-worker", &db, tmp.path(), "n-worker-3", 0);
    eventually(Duration::from_secs(90), "waiting deploy done", || async {
        (api.0.deployment(&waiting).await["status"] == "deployed").then_some(())
    })
    .await;

    // A worker stopped gracefully marks itself removed.
    let pid = w3.0.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    w3.0.wait().unwrap();
    api.wait_node("n-worker-3", "removed", Duration::from_secs(5))
        .await;
    drop(w1);
    remove_containers(&app).await;
}
