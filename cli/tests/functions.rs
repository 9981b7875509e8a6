//! Functions end to end: real Postgres, real Docker, the in-process API and
//! worker. Each function is the app's busybox image running a shell command;
//! what the command prints is the witness of what it received.

mod common;

use std::time::Duration;

use common::{AppRepo, Harness, eventually, norn, unique_app};
use serde_json::{Value, json};

/// An app with a web process (so a deploy has something to health-check)
/// and the given function processes.
fn function_app(app: &str, repo: &AppRepo, functions: Value) -> Value {
    let mut processes =
        json!({"web": {"port": 8080, "health": {"path": "/health", "timeout": "2s"}}});
    for (name, process) in functions.as_object().unwrap() {
        processes[name] = process.clone();
    }
    json!({"name": app, "repo": {"url": repo.url()}, "processes": processes})
}

/// A raw invocation: `(status, headers, body)`.
async fn invoke(
    h: &Harness,
    path_and_query: &str,
    body: &'static str,
    content_type: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = h.http.post(format!("{}{path_and_query}", h.api)).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

/// Polls an execution until it ended.
async fn ended(h: &Harness, id: i64) -> Value {
    eventually(Duration::from_secs(120), "the execution to end", || async {
        let (_, e) = h.get(&format!("/api/functions/executions/{id}")).await;
        matches!(
            e["status"].as_str(),
            Some("succeeded" | "failed" | "timed_out" | "canceled")
        )
        .then_some(e)
    })
    .await
}

/// Polls an execution until it runs.
async fn running(h: &Harness, id: i64) -> Value {
    eventually(Duration::from_secs(120), "the execution to run", || async {
        let (_, e) = h.get(&format!("/api/functions/executions/{id}")).await;
        (e["status"] == "running").then_some(e)
    })
    .await
}

/// Function containers of `app` (any state), by name.
async fn function_containers(app: &str) -> Vec<String> {
    common::all_containers()
        .await
        .into_iter()
        .filter(|c| {
            c.labels.as_ref().is_some_and(|l| {
                l.get("norn.app").map(String::as_str) == Some(app)
                    && l.get("norn.job").map(String::as_str) == Some("function")
            })
        })
        .filter_map(|c| {
            c.names?
                .first()
                .map(|n| n.trim_start_matches('/').to_owned())
        })
        .collect()
}

async fn no_function_containers_left(app: &str) {
    eventually(
        Duration::from_secs(60),
        "function containers to go",
        || async { function_containers(app).await.is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invocation_gets_its_request_and_answers_with_its_output_and_exit_code() {
    let h = Harness::start().await;
    let app = unique_app("fn");
    let repo = AppRepo::create(h.tmp.path(), &app);
    let mut spec = function_app(
        &app,
        &repo,
        json!({
            "echo": {"function": {"timeout": "20s"}, "command":
                "echo \"method=$NORN_REQUEST_METHOD path=$NORN_REQUEST_PATH query=$NORN_REQUEST_QUERY ct=$NORN_REQUEST_CONTENT_TYPE fn=$NORN_FUNCTION id=$NORN_EXECUTION_ID\"; echo \"in=$(cat)\"; echo \"secret=$FN_SECRET\""},
            "fail": {"function": {}, "command": "echo failing; exit 7"},
        }),
    );
    spec["secrets"] = json!(["FN_SECRET"]);
    assert_eq!(h.post("/api/apps", spec).await.0, 201);
    let (code, body) = h
        .put(
            &format!("/api/apps/{app}/secrets"),
            json!({"FN_SECRET": "hunter2-fn-secret"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let deployed = h.deploy(&app, "HEAD").await;
    assert_eq!(h.wait_terminal(&deployed).await["status"], "deployed");

    let (code, _, answer) = invoke(
        &h,
        &format!("/api/apps/{app}/invoke/orders/42?process=echo&x=1&y=two"),
        "hello stdin",
        Some("text/plain"),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    let id = answer["id"].as_i64().unwrap();
    assert_eq!(answer["status"], "succeeded", "{answer}");
    assert_eq!(answer["exitCode"], 0);
    assert!(answer["durationMs"].as_i64().is_some(), "{answer}");
    let output = answer["output"].as_str().unwrap();
    assert!(
        output.contains(&format!(
            "method=POST path=/orders/42 query=x=1&y=two ct=text/plain fn=echo id={id}\n"
        )),
        "{output}"
    );
    assert!(output.contains("in=hello stdin\n"), "{output}");
    // The secret reached the container, and never the output.
    assert!(output.contains("secret=***"), "{output}");
    assert!(!output.contains("hunter2"), "{output}");
    let (sum, stored): (i64, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT ((output LIKE '%hunter2%')::int + (reason IS NOT NULL)::int)::bigint, input FROM func_executions WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(sum, 0, "the stored output holds the secret, or a reason");
    assert!(stored.is_none(), "the request body is kept after the run");

    // The record: read, and listed newest first with filters.
    let (code, e) = h.get(&format!("/api/functions/executions/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(
        (e["process"].as_str(), e["trigger"].as_str()),
        (Some("echo"), Some("sync"))
    );
    assert_eq!(e["requestPath"], "/orders/42");
    assert!(e["imageTag"].as_str().is_some_and(|t| !t.is_empty()), "{e}");

    // A non-zero exit: failed, with the code; the CLI exits with it.
    let run = norn(&h.api, &["invoke", &app, "-p", "fail"]).await;
    assert_eq!(run.code, 7, "{run}");
    assert_eq!(run.stdout, "failing\n", "{run}");
    assert!(run.stderr.contains("exited with 7"), "{run}");
    let run = norn(
        &h.api,
        &["invoke", &app, "--process", "echo", "-d", "from the cli"],
    )
    .await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("in=from the cli\n"), "{run}");

    let (_, list) = h
        .get(&format!(
            "/api/apps/{app}/functions/executions?process=echo"
        ))
        .await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(
        list[0]["id"].as_i64() > list[1]["id"].as_i64(),
        "newest first"
    );
    assert!(list[0]["output"].is_null(), "lists carry no output");
    let (_, failed) = h
        .get(&format!(
            "/api/apps/{app}/functions/executions?status=failed"
        ))
        .await;
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");

    // Bad requests name what is wrong; nothing is recorded for them.
    let (code, _, e) = invoke(&h, &format!("/api/apps/{app}/invoke?process=web"), "", None).await;
    assert_eq!((code, e["field"].as_str()), (400, Some("process")), "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("not a function"),
        "{e}"
    );
    let (code, _, e) = invoke(&h, &format!("/api/apps/{app}/invoke"), "", None).await;
    assert_eq!((code, e["field"].as_str()), (400, Some("process")), "{e}");
    let (code, _, e) = invoke(&h, "/api/apps/no-such-app/invoke", "", None).await;
    assert_eq!(code, 404, "{e}");
    let (code, _, e) = invoke(
        &h,
        &format!("/api/apps/{app}/invoke?process=echo&async=maybe"),
        "",
        None,
    )
    .await;
    assert_eq!((code, e["field"].as_str()), (400, Some("async")), "{e}");
    let (code, e) = h.get("/api/functions/executions/not-a-number").await;
    assert_eq!((code, e["field"].as_str()), (400, Some("id")), "{e}");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM func_executions WHERE app = $1")
        .bind(&app)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(n, 3, "only the three real invocations are recorded");
    no_function_containers_left(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_without_a_release_is_refused_and_an_async_invocation_is_fetched_later() {
    let h = Harness::start().await;
    let app = unique_app("fnasync");
    let repo = AppRepo::create(h.tmp.path(), &app);
    let spec = function_app(
        &app,
        &repo,
        json!({"echo": {"function": {}, "command": "echo \"got $(cat)\""}}),
    );
    assert_eq!(h.post("/api/apps", spec).await.0, 201);
    let (code, _, e) = invoke(&h, &format!("/api/apps/{app}/invoke"), "x", None).await;
    assert_eq!(code, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("no release"), "{e}");
    let run = norn(&h.api, &["invoke", &app]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("no release"), "{run}");

    let deployed = h.deploy(&app, "HEAD").await;
    assert_eq!(h.wait_terminal(&deployed).await["status"], "deployed");
    let (code, headers, accepted) = invoke(
        &h,
        &format!("/api/apps/{app}/invoke?async=true"),
        "later",
        None,
    )
    .await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["id"].as_i64().unwrap();
    assert_eq!(
        headers["location"].to_str().unwrap(),
        format!("/api/functions/executions/{id}")
    );
    let e = ended(&h, id).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["trigger"], "async");
    assert_eq!(e["output"], "got later\n");
    let run = norn(&h.api, &["invoke", &app, "--async", "-d", "x"]).await;
    assert_eq!(run.code, 0, "{run}");
    let id: i64 = run.stdout.trim().parse().unwrap();
    assert_eq!(ended(&h, id).await["output"], "got x\n");
    no_function_containers_left(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_past_its_timeout_is_killed_and_one_over_its_memory_ends_failed_out_of_memory() {
    let h = Harness::start().await;
    let app = unique_app("fnkill");
    let repo = AppRepo::create(h.tmp.path(), &app);
    let spec = function_app(
        &app,
        &repo,
        json!({
            "slow": {"function": {"timeout": "2s"}, "command": "echo started; sleep 60; echo never"},
            // Holds 64 MiB in a shell variable: over a 16 MiB cap.
            "hog": {"function": {"memory": 16}, "command": "a=$(head -c 67108864 /dev/zero | tr '\\0' x); echo ${#a}"},
        }),
    );
    h.register_and_deploy(spec).await;

    let (code, _, slow) = invoke(
        &h,
        &format!("/api/apps/{app}/invoke?process=slow"),
        "",
        None,
    )
    .await;
    assert_eq!(code, 200, "{slow}");
    assert_eq!(slow["status"], "timed_out", "{slow}");
    assert!(slow["exitCode"].is_null(), "{slow}");
    assert_eq!(slow["output"], "started\n", "{slow}");
    let took = slow["durationMs"].as_i64().unwrap();
    assert!(
        (2000..30_000).contains(&took),
        "killed after {took} ms, not at its 2 s timeout"
    );

    let (code, _, hog) = invoke(&h, &format!("/api/apps/{app}/invoke?process=hog"), "", None).await;
    assert_eq!(code, 200, "{hog}");
    assert_eq!(hog["status"], "failed", "{hog}");
    assert!(
        hog["reason"]
            .as_str()
            .unwrap()
            .contains("out of memory (limit 16 MiB)"),
        "{hog}"
    );
    // Both containers are gone: the killed one did not linger.
    no_function_containers_left(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_beyond_the_concurrency_wait_in_order_and_past_the_backlog_callers_get_429() {
    let h = Harness::start_with(|c| c.function_backlog = 2).await;
    let app = unique_app("fnslots");
    let repo = AppRepo::create(h.tmp.path(), &app);
    let spec = function_app(
        &app,
        &repo,
        json!({"one": {"function": {"concurrency": 1, "timeout": "30s"}, "command": "cat; sleep 4"}}),
    );
    h.register_and_deploy(spec).await;
    let path = format!("/api/apps/{app}/invoke?async=true");
    let mut ids = Vec::new();
    for body in ["first", "second", "third"] {
        let (code, _, a) = invoke(&h, &path, body, None).await;
        assert_eq!(code, 202, "{a}");
        ids.push(a["id"].as_i64().unwrap());
    }
    // One running or about to + two waiting = concurrency 1 + backlog 2.
    let (code, headers, e) = invoke(&h, &path, "fourth", None).await;
    assert_eq!(code, 429, "{e}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("concurrency 1 + backlog 2"),
        "{e}"
    );

    let mut runs = Vec::new();
    for (id, body) in ids.iter().zip(["first", "second", "third"]) {
        let e = ended(&h, *id).await;
        assert_eq!(
            (e["status"].as_str(), e["output"].as_str()),
            (Some("succeeded"), Some(body)),
            "{e}"
        );
        let at = |f: &str| chrono::DateTime::parse_from_rfc3339(e[f].as_str().unwrap()).unwrap();
        runs.push((at("startedAt"), at("finishedAt")));
    }
    // One at a time, oldest first: each started after the one before ended.
    for pair in runs.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "runs overlapped: {runs:?}");
    }
    // With the slots free again, an invocation is accepted.
    let (code, _, a) = invoke(&h, &format!("/api/apps/{app}/invoke"), "again", None).await;
    assert_eq!((code, a["output"].as_str()), (200, Some("again")), "{a}");
    no_function_containers_left(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_ends_a_waiting_run_at_once_and_stops_a_running_one() {
    let h = Harness::start().await;
    let app = unique_app("fncancel");
    let repo = AppRepo::create(h.tmp.path(), &app);
    let spec = function_app(
        &app,
        &repo,
        json!({"nap": {"function": {"concurrency": 1, "timeout": "120s"}, "command": "echo napping; sleep 100"}}),
    );
    h.register_and_deploy(spec).await;
    let path = format!("/api/apps/{app}/invoke?async=true");
    let (_, _, first) = invoke(&h, &path, "", None).await;
    let (_, _, second) = invoke(&h, &path, "", None).await;
    let (first, second) = (
        first["id"].as_i64().unwrap(),
        second["id"].as_i64().unwrap(),
    );
    running(&h, first).await;
    eventually(Duration::from_secs(60), "the run's container", || async {
        (!function_containers(&app).await.is_empty()).then_some(())
    })
    .await;

    let (code, e) = h
        .post(
            &format!("/api/functions/executions/{second}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!((code, e["status"].as_str()), (200, Some("canceled")), "{e}");
    let (code, e) = h
        .post(
            &format!("/api/functions/executions/{first}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(code, 202, "{e}");
    let e = ended(&h, first).await;
    assert_eq!(e["status"], "canceled", "{e}");
    let took = e["durationMs"].as_i64().unwrap();
    assert!(took < 60_000, "the cancelled run went on for {took} ms");
    no_function_containers_left(&app).await;
    // The waiting one never ran; an ended one cannot be cancelled again.
    let (_, e) = h.get(&format!("/api/functions/executions/{second}")).await;
    assert!(e["startedAt"].is_null(), "{e}");
    let (code, e) = h
        .post(
            &format!("/api/functions/executions/{first}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(code, 409, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_never_cuts_off_a_running_invocation_and_events_go_out_on_ws() {
    use futures::StreamExt;
    let h = Harness::start().await;
    let app = unique_app("fnredeploy");
    let repo = AppRepo::create(h.tmp.path(), &app);
    let spec = function_app(
        &app,
        &repo,
        json!({"page": {"function": {"timeout": "180s"}, "command": "sleep 25; cat /www/index.html"}}),
    );
    h.register_and_deploy(spec).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/ws", h.api.replacen("http", "ws", 1)))
            .await
            .unwrap();
    let (_, _, a) = invoke(&h, &format!("/api/apps/{app}/invoke?async=true"), "", None).await;
    let id = a["id"].as_i64().unwrap();
    running(&h, id).await;
    repo.commit("v2");
    let second = h.deploy(&app, "HEAD").await;
    let deployed = h.wait_terminal(&second).await;
    assert_eq!(deployed["status"], "deployed");
    let e = ended(&h, id).await;
    assert_eq!(
        (e["status"].as_str(), e["output"].as_str()),
        (Some("succeeded"), Some("v1")),
        "{e}"
    );
    // It was still running when the new release took over (else this
    // proves nothing), and it finished on the image it started with.
    let at =
        |v: &Value, f: &str| chrono::DateTime::parse_from_rfc3339(v[f].as_str().unwrap()).unwrap();
    assert!(
        at(&e, "finishedAt") > at(&deployed, "finishedAt"),
        "the run ended before the deploy did: {e} / {deployed}"
    );
    let (_, _, after) = invoke(&h, &format!("/api/apps/{app}/invoke"), "", None).await;
    assert_eq!(after["output"], "v2", "{after}");

    // Its start and end went out live, in order.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("no live event")
            .unwrap()
            .unwrap();
        let Ok(text) = msg.into_text() else { continue };
        let event: Value = serde_json::from_str(&text).unwrap_or_default();
        if event["payload"]["executionId"] == id {
            seen.push(event["type"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(seen, ["func.started", "func.completed"]);
    no_function_containers_left(&app).await;
}

/// Warm containers of `app` that no run has taken yet (running, and not
/// any execution's container).
async fn idle_warm(h: &Harness, app: &str) -> Vec<String> {
    let used: Vec<(Option<String>,)> =
        sqlx::query_as("SELECT container FROM func_executions WHERE app = $1")
            .bind(app)
            .fetch_all(&h.pool)
            .await
            .unwrap();
    let used: Vec<String> = used.into_iter().filter_map(|(c,)| c).collect();
    common::all_containers()
        .await
        .into_iter()
        .filter(|c| {
            c.state.as_ref().map(|s| s.to_string()).as_deref() == Some("running")
                && c.labels.as_ref().is_some_and(|l| {
                    l.get("norn.app").map(String::as_str) == Some(app)
                        && l.contains_key("norn.function.warm")
                })
        })
        .filter_map(|c| {
            c.names?
                .first()
                .map(|n| n.trim_start_matches('/').to_owned())
        })
        .filter(|n| !used.contains(n))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_function_runs_in_containers_made_ahead_each_used_once_and_made_again_after_a_deploy()
 {
    let h = Harness::start().await;
    let app = unique_app("fnwarm");
    let repo = AppRepo::create(h.tmp.path(), &app);
    let spec = function_app(
        &app,
        &repo,
        json!({"page": {"function": {"warm": 2}, "command":
            "echo \"host=$(hostname) in=$(cat) path=$NORN_REQUEST_PATH id=$NORN_EXECUTION_ID page=$(cat /www/index.html)\""}}),
    );
    h.register_and_deploy(spec).await;
    // The first run is cold, and fills the pool.
    let (code, _, first) = invoke(&h, &format!("/api/apps/{app}/invoke"), "cold", None).await;
    assert_eq!(code, 200, "{first}");
    let mut hosts = std::collections::HashSet::new();
    for i in 0..3 {
        let ready = eventually(Duration::from_secs(120), "two warm containers", || async {
            let idle = idle_warm(&h, &app).await;
            (idle.len() >= 2).then_some(idle)
        })
        .await;
        let body: &'static str = ["one", "two", "three"][i];
        let (code, _, a) = invoke(&h, &format!("/api/apps/{app}/invoke/p{i}"), body, None).await;
        assert_eq!(
            (code, a["status"].as_str()),
            (200, Some("succeeded")),
            "{a}"
        );
        let id = a["id"].as_i64().unwrap();
        let out = a["output"].as_str().unwrap();
        assert!(
            out.contains(&format!("in={body} path=/p{i} id={id} page=v1")),
            "{out}"
        );
        let host = out.split_whitespace().next().unwrap().to_owned();
        assert!(hosts.insert(host), "a container ran two requests: {out}");
        let (_, e) = h.get(&format!("/api/functions/executions/{id}")).await;
        let container = e["container"].as_str().unwrap().to_owned();
        assert!(
            ready.contains(&container),
            "{container} was not made ahead: {ready:?}"
        );
    }
    // A new release: the pool made for the old image is not used again.
    repo.commit("v2");
    let second = h.deploy(&app, "HEAD").await;
    assert_eq!(h.wait_terminal(&second).await["status"], "deployed");
    let old = idle_warm(&h, &app).await;
    let (_, _, a) = invoke(&h, &format!("/api/apps/{app}/invoke"), "new", None).await;
    assert!(a["output"].as_str().unwrap().contains("page=v2"), "{a}");
    eventually(
        Duration::from_secs(60),
        "the old release's warm containers to go",
        || async {
            let idle = idle_warm(&h, &app).await;
            (!old.iter().any(|o| idle.contains(o))).then_some(())
        },
    )
    .await;
    // Stopping the worker removes what it kept warm.
    drop(h);
    no_function_containers_left(&app).await;
}
