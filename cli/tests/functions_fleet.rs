//! Functions across real processes: two API replicas and two workers share
//! one Postgres. Every run reports its caller's token to a witness HTTP
//! server on the host, so "exactly once" is counted where runs happen.
//! `NORN_FUNCTION_FLEET_CALLS` sets the number of parallel callers (default
//! 100, the figure).

mod common;

use std::time::Duration;

use common::procs::{self, Proc, ProcApi};
use common::witness::Witness;
use common::{AppRepo, eventually, unique_app};
use serde_json::{Value, json};

/// Registers `app` with one function running `command` and deploys it.
async fn deploy_function_app(api: &ProcApi, tmp: &std::path::Path, app: &str, function: Value) {
    let repo = AppRepo::create(tmp, app);
    let spec = json!({
        "name": app,
        "repo": {"url": repo.url()},
        "processes": {
            "web": {"port": 8080, "health": {"path": "/health", "timeout": "2s"}},
            "run": function,
        },
    });
    let (status, body) = api.post("/api/apps", spec).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api
        .post(&format!("/api/apps/{app}/deploy"), json!({"ref": "HEAD"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let done = api.wait_terminal(&id, Duration::from_secs(180)).await;
    assert_eq!(done["status"], "deployed", "{done}");
}

async fn invoke(http: &reqwest::Client, api: &str, app: &str, body: String) -> (u16, Value) {
    let resp = http
        .post(format!("{api}/api/apps/{app}/invoke"))
        .body(body)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_callers_through_two_apis_and_two_workers_each_get_their_own_result_once() {
    let calls: usize = std::env::var("NORN_FUNCTION_FLEET_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let ports = [procs::free_port(), procs::free_port()];
    let _apis: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| procs::spawn("norn-api", &db, tmp.path(), &format!("api{i}"), *port))
        .collect();
    let _workers: Vec<Proc> = (0..2)
        .map(|i| procs::spawn("norn-worker", &db, tmp.path(), &format!("w{i}"), 0))
        .collect();
    let bases: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let api = ProcApi::new(&bases[0]).await;
    ProcApi::new(&bases[1]).await;
    let witness = Witness::start().await;
    let app = unique_app("fnfleet");
    let command = format!("t=$(cat); {}; echo \"$t\"", witness.get("hit/$t"));
    deploy_function_app(
        &api,
        tmp.path(),
        &app,
        json!({"function": {"concurrency": 6, "timeout": "60s"}, "command": command}),
    )
    .await;

    let http = reqwest::Client::new();
    let callers: Vec<_> = (0..calls)
        .map(|i| {
            let (http, base, app) = (http.clone(), bases[i % 2].clone(), app.clone());
            tokio::spawn(async move {
                let token = format!("tok{i}");
                let (status, answer) = invoke(&http, &base, &app, token.clone()).await;
                (token, status, answer)
            })
        })
        .collect();
    for caller in callers {
        let (token, status, answer) = caller.await.unwrap();
        assert_eq!(status, 200, "{token}: {answer}");
        assert_eq!(answer["status"], "succeeded", "{token}: {answer}");
        assert_eq!(
            answer["output"],
            format!("{token}\n"),
            "a caller got another's result"
        );
    }
    // Counted where the runs happened: every token once, nothing else.
    let counts = witness.counts("hit");
    assert_eq!(counts.len(), calls, "runs seen: {counts:?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "a run happened twice: {counts:?}"
    );
    let pool = norn_shared::db::connect(&db, 2).await.unwrap();
    let by_node: Vec<(String, i64)> = sqlx::query_as(
        "SELECT node, count(*) FROM func_executions WHERE app = $1 AND status = 'succeeded' GROUP BY node",
    )
    .bind(&app)
    .fetch_all(&pool)
    .await
    .unwrap();
    eprintln!("runs per worker: {by_node:?}");
    assert_eq!(by_node.iter().map(|(_, n)| n).sum::<i64>(), calls as i64);
    common::remove_containers(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_run_leaves_its_execution_failed_worker_lost_and_its_slot_free() {
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = procs::free_port();
    let _api = procs::spawn("norn-api", &db, tmp.path(), "api", port);
    let _scheduler = procs::spawn("norn-scheduler", &db, tmp.path(), "sched", 0);
    let mut workers: Vec<Option<Proc>> = (0..2)
        .map(|i| {
            Some(procs::spawn(
                "norn-worker",
                &db,
                tmp.path(),
                &format!("w{i}"),
                0,
            ))
        })
        .collect();
    let base = format!("http://127.0.0.1:{port}");
    let api = ProcApi::new(&base).await;
    let app = unique_app("fnlost");
    deploy_function_app(
        &api,
        tmp.path(),
        &app,
        json!({"function": {"concurrency": 1, "timeout": "600s"},
               "command": "x=$(cat); if [ \"$x\" = nap ]; then sleep 500; fi; echo \"done $x\""}),
    )
    .await;
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{base}/api/apps/{app}/invoke?async=true"))
        .body("nap")
        .send()
        .await
        .unwrap();
    let id = resp.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let node = eventually(Duration::from_secs(120), "the run to start", || async {
        let e = api.get(&format!("/api/functions/executions/{id}")).await;
        (e["status"] == "running").then(|| e["node"].as_str().unwrap().to_owned())
    })
    .await;
    let pool = norn_shared::db::connect(&db, 2).await.unwrap();
    let (pid,): (i32,) = sqlx::query_as("SELECT pid FROM cluster_nodes WHERE id = $1")
        .bind(&node)
        .fetch_one(&pool)
        .await
        .unwrap();
    let victim = workers
        .iter_mut()
        .find(|w| w.as_ref().is_some_and(|p| p.0.id() == pid as u32))
        .expect("the running worker is one of ours");
    // Dropping a Proc SIGKILLs it: no chance to record anything.
    drop(victim.take());

    let e = eventually(
        Duration::from_secs(150),
        "the execution to be declared lost",
        || async {
            let e = api.get(&format!("/api/functions/executions/{id}")).await;
            (e["status"] != "running").then_some(e)
        },
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(e["reason"], "worker lost", "{e}");
    // Its slot is free: the next invocation runs (concurrency 1) on the survivor.
    let resp = http
        .post(format!("{base}/api/apps/{app}/invoke"))
        .body("again")
        .send()
        .await
        .unwrap();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["output"], "done again\n", "{answer}");
    // The survivor's janitor removes the dead worker's container.
    eventually(
        Duration::from_secs(120),
        "the lost run's container to go",
        || async {
            let left = common::all_containers().await.into_iter().any(|c| {
                c.labels.as_ref().is_some_and(|l| {
                    l.get("norn.function.execution").map(String::as_str) == Some(&id.to_string())
                        && l.get("norn.app") == Some(&app)
                })
            });
            (!left).then_some(())
        },
    )
    .await;
    common::remove_containers(&app).await;
}
