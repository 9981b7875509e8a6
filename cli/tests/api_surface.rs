//! The API surface the README documents and no other test reaches: the app
//! list, `Idempotency-Key`, `/ws` and its events, bearer-token auth,
//! `/api/health` with Postgres down, replicas behind the ingress, and apps
//! registered from `NORN_APPS_DIR` (with no repository). Real Postgres, real
//! Docker, real git; the real binaries where the behaviour starts from the
//! environment.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::procs::*;
use common::*;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long one live event may take to arrive (a build under load is slow).
const EVENT_WAIT: Duration = Duration::from_secs(120);

/// `sql` (a `count(*)` with one parameter) for `bind`.
async fn count(pool: &sqlx::PgPool, sql: &'static str, bind: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql)
        .bind(bind)
        .fetch_one(pool)
        .await
        .unwrap();
    n
}

/// `sql` (a `count(*)` with no parameter).
async fn count_all(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.unwrap();
    n
}

/// Opens a WebSocket; `Err(status)` when the server refused the upgrade.
async fn ws_connect<R>(req: R) -> Result<Ws, u16>
where
    R: IntoClientRequest + Unpin,
{
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

fn ws_url(api: &str, query: &str) -> String {
    format!("{}/ws{query}", api.replacen("http", "ws", 1))
}

/// The next JSON text frame, or a panic naming `what` after [`EVENT_WAIT`].
async fn next_event(ws: &mut Ws, what: &str) -> Value {
    loop {
        let msg = tokio::time::timeout(EVENT_WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no live event while waiting for {what}"))
            .unwrap_or_else(|| panic!("socket closed while waiting for {what}"))
            .unwrap();
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Sends a live event the way every writer does (`pg_notify` on `norn_events`).
async fn notify(pool: &sqlx::PgPool, kind: &str, app: &str) {
    let event = json!({"type": kind, "app": app, "payload": {}}).to_string();
    sqlx::query("SELECT pg_notify('norn_events', $1)")
        .bind(event)
        .execute(pool)
        .await
        .unwrap();
}

/// The API LISTENs on a task of its own that may not be connected yet when
/// the server starts: pings until one arrives on `ws` (pings are ignored by
/// every collector below).
async fn wait_events_flow(pool: &sqlx::PgPool, ws: &mut Ws) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        notify(pool, "test.ping", "warmup").await;
        if let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_millis(300), ws.next()).await
        {
            let event: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(event["type"], "test.ping", "{event}");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API never relayed a NOTIFY to /ws"
        );
    }
}

/// `(type, step, status)` of a deploy event, for comparing sequences.
fn shape(event: &Value) -> (String, String, String) {
    let p = &event["payload"];
    (
        event["type"].as_str().unwrap_or_default().to_owned(),
        p["step"].as_str().unwrap_or_default().to_owned(),
        p["status"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The live events of one successful deploy of an app with no test command,
/// no database and no migrations, in order.
fn expected_deploy_events() -> Vec<(String, String, String)> {
    let mut want = vec![("deploy.queued".into(), String::new(), "queued".into())];
    for (step, end) in [
        ("forge", "skipped"),
        ("clone", "complete"),
        ("build", "complete"),
        ("test", "skipped"),
        ("snapshot", "skipped"),
        ("migrate", "skipped"),
        ("deploy", "complete"),
        ("healthy", "complete"),
        ("cleanup", "complete"),
    ] {
        for status in ["running", end] {
            want.push(("deploy.step".into(), step.into(), status.into()));
        }
    }
    want.push(("deploy.completed".into(), String::new(), String::new()));
    want
}

/// The deployment an event is about.
fn deployment_of(event: &Value) -> Option<&str> {
    let p = &event["payload"];
    p["deploymentId"].as_str().or(p["id"].as_str())
}

// ---------------------------------------------------------------- GET /api/apps

#[tokio::test]
async fn listing_apps_shows_each_registered_app_once_with_its_latest_validated_spec() {
    let h = Harness::start().await;
    let (a, b) = (unique_app("list-a"), unique_app("list-b"));
    let repo = AppRepo::create(h.tmp.path(), &a);
    assert_eq!(h.post("/api/apps", spec(&a, &repo, None)).await.0, 201);
    assert_eq!(h.post("/api/apps", spec(&b, &repo, None)).await.0, 201);
    // `a` again, changed: replaced, not added.
    let mut changed = spec(&a, &repo, Some("true"));
    changed["env"] = json!({"GREETING": "second"});
    changed["processes"]["web"]["replicas"] = json!(2);
    let (code, body) = h.post("/api/apps", changed).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["created"], false, "{body}");

    let (code, list) = h.get("/api/apps").await;
    assert_eq!(code, 200, "{list}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|app| app["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.as_str(), b.as_str()], "{list}");
    let stored = count_all(&h.pool, "SELECT count(*) FROM apps").await;
    assert_eq!(stored, 2);

    let first = &list[0];
    assert_eq!(first["source"], "api");
    let spec_a = &first["spec"];
    assert_eq!(spec_a["name"], a.as_str());
    assert_eq!(spec_a["env"]["GREETING"], "second", "{spec_a}");
    assert_eq!(spec_a["processes"]["web"]["replicas"], 2, "{spec_a}");
    assert_eq!(spec_a["build"]["test"], "true", "{spec_a}");
    // Validated: defaults the document left out are filled in.
    let spec_b = &list[1]["spec"];
    assert_eq!(spec_b["processes"]["web"]["replicas"], 1, "{spec_b}");
    assert_eq!(spec_b["repo"]["branch"], "main", "{spec_b}");
    assert_eq!(spec_b["build"]["dockerfile"], "Dockerfile", "{spec_b}");
    assert_eq!(spec_b["deployPolicy"]["queue"], "supersede", "{spec_b}");
    assert_eq!(spec_b["env"], json!({}), "{spec_b}");
}

// ---------------------------------------------------------- Idempotency-Key

async fn deploy_with_key(h: &Harness, app: &str, key: &str) -> (u16, Value) {
    let resp = h
        .http
        .post(format!("{}/api/apps/{app}/deploy", h.api))
        .header("Idempotency-Key", key)
        .json(&json!({"ref": "HEAD"}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

const DEPLOYMENTS_OF: &str = "SELECT count(*) FROM deployments WHERE app = $1";
const DEPLOY_JOBS_OF: &str = "SELECT count(*) FROM apalis.jobs j JOIN deployments d \
     ON j.idempotency_key = d.id WHERE j.job_type = 'norn.deploy' AND d.app = $1";
const ALL_DEPLOY_JOBS: &str = "SELECT count(*) FROM apalis.jobs WHERE job_type = 'norn.deploy'";

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_deployment_and_queues_nothing_more() {
    let h = Harness::start().await;
    let app = unique_app("idem");
    let repo = AppRepo::create(h.tmp.path(), &app);
    assert_eq!(h.post("/api/apps", spec(&app, &repo, None)).await.0, 201);

    let (code, body) = deploy_with_key(&h, &app, "retry-1").await;
    assert_eq!(code, 202, "{body}");
    assert!(body.get("duplicate").is_none(), "{body}");
    let first = body["id"].as_str().unwrap().to_owned();

    let (code, body) = deploy_with_key(&h, &app, "retry-1").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["duplicate"], true, "{body}");
    assert_eq!(body["id"], first.as_str(), "{body}");
    assert_eq!(count(&h.pool, DEPLOYMENTS_OF, &app).await, 1);
    assert_eq!(count_all(&h.pool, ALL_DEPLOY_JOBS).await, 1);
    let queued = "SELECT count(*) FROM saga_events WHERE action = 'deploy.queued' AND app = $1";
    assert_eq!(count(&h.pool, queued, &app).await, 1);

    // Another key is another deployment, with its own job.
    let (code, body) = deploy_with_key(&h, &app, "retry-2").await;
    assert_eq!(code, 202, "{body}");
    let second = body["id"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(count(&h.pool, DEPLOYMENTS_OF, &app).await, 2);
    assert_eq!(count(&h.pool, DEPLOY_JOBS_OF, &app).await, 2);
    assert_eq!(count_all(&h.pool, ALL_DEPLOY_JOBS).await, 2);

    // A retry after the deployment ended still answers with it.
    let ended = h.wait_terminal(&first).await;
    assert_eq!(h.wait_terminal(&second).await["status"], "deployed");
    let (code, body) = deploy_with_key(&h, &app, "retry-1").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["id"], first.as_str(), "{body}");
    assert_eq!(body["status"], ended["status"], "{body}");
    assert_eq!(count(&h.pool, DEPLOYMENTS_OF, &app).await, 2);
    assert_eq!(count_all(&h.pool, ALL_DEPLOY_JOBS).await, 2);

    // Keys are per app: the same key on another app queues a deploy of it.
    let other = unique_app("idem-other");
    assert_eq!(h.post("/api/apps", spec(&other, &repo, None)).await.0, 201);
    let (code, body) = deploy_with_key(&h, &other, "retry-1").await;
    assert_eq!(code, 202, "{body}");
    let third = body["id"].as_str().unwrap().to_owned();
    assert_eq!(count(&h.pool, DEPLOYMENTS_OF, &other).await, 1);
    assert_eq!(count_all(&h.pool, ALL_DEPLOY_JOBS).await, 3);
    assert_eq!(h.wait_terminal(&third).await["status"], "deployed");

    // A key that is not a visible ASCII string is refused and names the header.
    let resp = h
        .http
        .post(format!("{}/api/apps/{app}/deploy", h.api))
        .header("Idempotency-Key", "x".repeat(201))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["field"], "Idempotency-Key", "{body}");
    assert_eq!(count(&h.pool, DEPLOYMENTS_OF, &app).await, 2);

    remove_containers(&app).await;
    remove_containers(&other).await;
}

// ------------------------------------------------------------------------ /ws

#[tokio::test]
async fn ws_streams_queued_every_step_in_order_and_completed_and_filters_by_app() {
    let h = Harness::start().await;
    let mut all = ws_connect(ws_url(&h.api, "")).await.unwrap();
    wait_events_flow(&h.pool, &mut all).await;

    let (a, b) = (unique_app("ws-a"), unique_app("ws-b"));
    let repo = AppRepo::create(h.tmp.path(), &a);
    assert_eq!(h.post("/api/apps", spec(&a, &repo, None)).await.0, 201);
    assert_eq!(h.post("/api/apps", spec(&b, &repo, None)).await.0, 201);
    let mut only_a = ws_connect(ws_url(&h.api, &format!("?app={a}")))
        .await
        .unwrap();

    let dep_a = h.deploy(&a, "HEAD").await;
    let dep_b = h.deploy(&b, "HEAD").await;

    // The unfiltered socket sees both deploys to their end.
    let mut seen = Vec::new();
    let mut finished = BTreeSet::new();
    while finished.len() < 2 {
        let event = next_event(&mut all, "both deploys to end").await;
        if event["type"] == "test.ping" {
            continue;
        }
        if matches!(
            event["type"].as_str(),
            Some("deploy.completed" | "deploy.failed")
        ) {
            finished.insert(event["app"].as_str().unwrap().to_owned());
        }
        seen.push(event);
    }
    let done_a = h.wait_terminal(&dep_a).await;
    assert_eq!(done_a["status"], "deployed", "{done_a}");

    // Everything the filtered socket was sent, up to a marker sent after
    // both deploys ended (every subscriber gets events in the same order).
    notify(&h.pool, "test.marker", &a).await;
    let mut filtered = Vec::new();
    loop {
        let event = next_event(&mut only_a, "the marker on ?app=").await;
        if event["type"] == "test.marker" {
            break;
        }
        filtered.push(event);
    }

    // Every event the server sent reads as the one typed `Event` the
    // OpenAPI document describes (the CLI reads them so too).
    for e in &seen {
        if let Err(err) = serde_json::from_value::<norn_shared::events::Event>(e.clone()) {
            panic!("event {e} is not an Event: {err}");
        }
    }
    let want = expected_deploy_events();
    // `deploy.log` batches (a step's output) come between a step's start and
    // end, as many as the output takes: checked apart from the fixed sequence.
    let is_log = |e: &&Value| e["type"] == "deploy.log";
    for (app, id) in [(&a, &dep_a), (&b, &dep_b)] {
        let logs: Vec<&Value> = seen
            .iter()
            .filter(|e| e["app"] == app.as_str())
            .filter(is_log)
            .collect();
        assert!(
            logs.iter()
                .any(|e| e["payload"]["step"] == "build"
                    && e["payload"]["deploymentId"] == id.as_str()),
            "no deploy.log of the build of {app}: {logs:#?}"
        );
        let mine: Vec<&Value> = seen
            .iter()
            .filter(|e| e["app"] == app.as_str() && !is_log(e))
            .collect();
        let shapes: Vec<_> = mine.iter().map(|e| shape(e)).collect();
        assert_eq!(shapes, want, "events of {app}: {mine:#?}");
        for e in &mine {
            assert_eq!(deployment_of(e), Some(id.as_str()), "{e}");
        }
    }
    let completed = seen
        .iter()
        .find(|e| e["type"] == "deploy.completed" && e["app"] == a.as_str())
        .unwrap();
    assert_eq!(
        completed["payload"]["imageTag"], done_a["imageTag"],
        "{completed}"
    );

    assert!(
        filtered.iter().all(|e| e["app"] == a.as_str()),
        "?app={a} let another app's events through: {filtered:#?}"
    );
    let shapes: Vec<_> = filtered.iter().filter(|e| !is_log(e)).map(shape).collect();
    assert_eq!(shapes, want, "{filtered:#?}");

    remove_containers(&a).await;
    remove_containers(&b).await;
}

// ---------------------------------------------------------------- bearer auth

const TOKEN: &str = "s3cret-token-for-the-api-test";

#[tokio::test]
async fn with_an_api_token_set_every_api_route_but_health_needs_it_and_ws_takes_it_as_a_subprotocol_from_its_own_origin()
 {
    let db = norn_shared::testing::fresh_database().await;
    let pool = norn_shared::db::connect(&db, 2).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _api = spawn_with(
        "norn-api",
        &db,
        tmp.path(),
        "auth-api",
        port,
        &[("NORN_API_TOKEN", TOKEN)],
    );
    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_api(&http, &api).await;

    let get = |path: &str, auth: Option<String>| {
        let mut req = http.get(format!("{api}{path}"));
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let json = resp
                .headers()
                .get("content-type")
                .is_some_and(|v| v.to_str().unwrap().starts_with("application/json"));
            (
                status,
                json,
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let bearer = |t: &str| Some(format!("Bearer {t}"));

    // Health stays open (load balancers probe it).
    let (code, _, body) = get("/api/health", None).await;
    assert_eq!(code, 200, "{body}");

    let refused = json!({"error": "missing or invalid bearer token"});
    for (what, path, auth) in [
        ("no token", "/api/apps", None),
        ("a wrong token", "/api/apps", bearer("wrong")),
        ("a prefix of the token", "/api/apps", bearer(&TOKEN[..8])),
        (
            "the token plus more",
            "/api/apps",
            bearer(&format!("{TOKEN}x")),
        ),
        (
            "another scheme",
            "/api/apps",
            Some(format!("Basic {TOKEN}")),
        ),
        (
            "the token as query",
            &format!("/api/apps?token={TOKEN}"),
            None,
        ),
        ("no token", "/api/cluster/nodes", None),
        ("no token", "/api/deployments", None),
    ] {
        let (code, json, body) = get(path, auth).await;
        assert_eq!((code, json), (401, true), "{what} on {path}: {body}");
        assert_eq!(body, refused, "{what} on {path}");
    }
    let (code, _, body) = get("/api/apps", bearer(TOKEN)).await;
    assert_eq!((code, body), (200, json!([])));

    // A refused write writes nothing.
    let app = unique_app("auth");
    let repo = AppRepo::create(tmp.path(), &app);
    let resp = http
        .post(format!("{api}/api/apps"))
        .json(&spec(&app, &repo, None))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(count_all(&pool, "SELECT count(*) FROM apps").await, 0);
    let resp = http
        .post(format!("{api}/api/apps"))
        .bearer_auth(TOKEN)
        .json(&spec(&app, &repo, None))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);

    // /ws: refused without the token and with it in the URL (where proxies
    // and logs keep it); open with it as a header or a subprotocol.
    let base = ws_url(&api, "");
    assert_eq!(ws_connect(base.clone()).await.err(), Some(401));
    let in_url = format!("{base}?app={app}&token={TOKEN}");
    assert_eq!(ws_connect(in_url).await.err(), Some(401));
    let with_protocol = |token: &str| {
        let mut req = format!("{base}?app={app}").into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            format!("norn, norn.bearer.{token}").parse().unwrap(),
        );
        req
    };
    assert_eq!(ws_connect(with_protocol("wrong")).await.err(), Some(401));
    let mut with_header = base.clone().into_client_request().unwrap();
    with_header
        .headers_mut()
        .insert("authorization", bearer(TOKEN).unwrap().parse().unwrap());
    let mut by_header = ws_connect(with_header).await.expect("header token refused");
    let mut by_protocol = ws_connect(with_protocol(TOKEN))
        .await
        .expect("subprotocol token refused");
    // A page of another origin may not open it, even with the token; the
    // API's own origin may.
    let mut foreign = with_protocol(TOKEN);
    foreign
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(ws_connect(foreign).await.err(), Some(403));
    let mut same = with_protocol(TOKEN);
    same.headers_mut().insert(
        "origin",
        format!("http://127.0.0.1:{port}").parse().unwrap(),
    );
    ws_connect(same).await.expect("same-origin page refused");
    wait_events_flow(&pool, &mut by_header).await;

    // Both sockets carry events; the deploy is recorded as the token's.
    let resp = http
        .post(format!("{api}/api/apps/{app}/deploy"))
        .bearer_auth(TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for ws in [&mut by_header, &mut by_protocol] {
        let event = loop {
            let e = next_event(ws, "deploy.queued").await;
            if e["type"] != "test.ping" {
                break e;
            }
        };
        assert_eq!(event["type"], "deploy.queued", "{event}");
        assert_eq!(event["payload"]["id"], id.as_str(), "{event}");
    }
    let (code, _, d) = get(&format!("/api/deployments/{id}"), bearer(TOKEN)).await;
    assert_eq!(code, 200);
    assert_eq!(d["triggeredBy"], "api-token", "{d}");
    let (_, _, trail) = get(&format!("/api/deployments/{id}/events"), bearer(TOKEN)).await;
    assert_eq!(trail[0]["actor"], "api-token", "{trail}");
}

// ------------------------------------------------------------- health and 503

/// A private cluster that is stopped and deleted however the test ends.
struct Cluster {
    data: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .flatten()
            .map(|e| e.path().join("bin/pg_ctl"))
            .max()
            .unwrap();
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin)
            .args(["-D", &self.data, "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

async fn health(http: &reqwest::Client, api: &str) -> (u16, Value) {
    let resp = http.get(format!("{api}/api/health")).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn health_answers_503_while_postgres_is_down_and_200_once_it_is_back() {
    let (db, data) = private_cluster().await;
    let cluster = Cluster { data };
    let pg_port = db.rsplit(':').next().unwrap().split('/').next().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _api = spawn("norn-api", &db, tmp.path(), "health-api", port);
    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    wait_api(&http, &api).await;

    let (code, body) = health(&http, &api).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["services"]["postgres"]["status"], "up", "{body}");
    assert!(body["queues"].is_object(), "{body}");

    pg_ctl(&cluster.data, &["-m", "fast", "-w", "stop"]);
    let (code, body) = health(&http, &api).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["services"]["postgres"]["status"], "down", "{body}");
    // Other routes fail with the generic 5xx body.
    let resp = http.get(format!("{api}/api/apps")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 500);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"error": "internal error"}));

    let options = format!("-h 127.0.0.1 -p {pg_port} -k /tmp -c fsync=off");
    let log = format!("{}/server.log", cluster.data);
    pg_ctl(&cluster.data, &["-w", "-l", &log, "-o", &options, "start"]);
    let body = eventually(Duration::from_secs(60), "health back to 200", || async {
        let (code, body) = health(&http, &api).await;
        (code == 200).then_some(body)
    })
    .await;
    assert_eq!(body["services"]["postgres"]["status"], "up", "{body}");
}

// ------------------------------------------------- replicas and round-robin

/// A CGI script answering with the container's hostname (Docker sets it to
/// the short container id). `read` and `echo` are shell builtins: the image
/// is `FROM scratch` with busybox as /bin/sh.
fn write_whoami(repo: &AppRepo) {
    use std::os::unix::fs::PermissionsExt;
    let dir = repo.dir.join("www/cgi-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("who");
    std::fs::write(
        &path,
        "#!/bin/sh\nread h < /etc/hostname\necho 'HTTP/1.1 200 OK'\necho 'Content-Type: text/plain'\necho\necho \"$h\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn three_replicas_run_and_the_ingress_sends_requests_to_each_in_turn() {
    let h = Harness::start().await;
    let app = unique_app("replicas");
    let repo = AppRepo::create(h.tmp.path(), &app);
    write_whoami(&repo);
    repo.commit("v1");
    let mut spec = spec(&app, &repo, None);
    spec["processes"]["web"]["replicas"] = json!(3);
    assert_eq!(h.post("/api/apps", spec).await.0, 201);
    let id = h.deploy(&app, "HEAD").await;
    let d = h.wait_terminal(&id).await;
    assert_eq!(d["status"], "deployed", "{d}");

    // Docker's witness: three containers of this deployment, one per replica.
    let mine: Vec<_> = all_containers()
        .await
        .into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get("norn.app"))
                .is_some_and(|a| *a == app)
        })
        .collect();
    assert_eq!(mine.len(), 3, "{mine:#?}");
    let mut replicas = BTreeSet::new();
    let mut hostnames = BTreeSet::new();
    for c in &mine {
        let labels = c.labels.as_ref().unwrap();
        assert_eq!(labels["norn.deployment"], id, "{c:?}");
        assert_eq!(
            c.state.as_ref().map(|s| s.to_string()).as_deref(),
            Some("running")
        );
        replicas.insert(labels["norn.replica"].clone());
        hostnames.insert(c.id.as_deref().unwrap()[..12].to_owned());
    }
    assert_eq!(
        replicas,
        BTreeSet::from(["0".into(), "1".into(), "2".into()])
    );

    // Through the ingress: every replica answers, in turn.
    let mut answers = Vec::new();
    for _ in 0..30 {
        let who = ingress_get(&h.http, h.ingress, &app, "/cgi-bin/who")
            .await
            .unwrap();
        answers.push(who.trim().to_owned());
    }
    let answered: BTreeSet<String> = answers.iter().cloned().collect();
    assert_eq!(answered, hostnames, "{answers:?}");
    let mut per_replica = BTreeMap::new();
    for a in &answers {
        *per_replica.entry(a.as_str()).or_insert(0) += 1;
    }
    assert!(per_replica.values().all(|n| *n == 10), "{per_replica:?}");
    for (i, who) in answers.iter().enumerate().skip(3) {
        assert_eq!(
            who,
            &answers[i % 3],
            "request {i} broke the turn: {answers:?}"
        );
    }

    remove_containers(&app).await;
}

// ------------------------------------------------- NORN_APPS_DIR, no repo

/// An app directory with no git repository: busybox serving `www/`.
fn write_app_dir(dir: &Path, name: &str, index: &str) {
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nCOPY www /www\n\
         CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .unwrap();
    std::fs::write(dir.join("www/health"), "ok\n").unwrap();
    std::fs::write(dir.join("www/index.html"), index).unwrap();
    std::fs::write(
        dir.join("infraspec.yaml"),
        format!(
            "name: {name}\nprocesses:\n  web:\n    port: 8080\n    health: {{path: /health, timeout: 2s}}\n"
        ),
    )
    .unwrap();
}

/// Starts norn-api (with an ingress) and a worker on `tmp`, whose `apps/`
/// must be ready before: the API registers it as it starts.
async fn start_procs(db: &str, tmp: &Path) -> (Proc, Proc, ProcApi, std::net::SocketAddr) {
    let port = free_port();
    let ingress_port = free_port();
    let ingress = format!("127.0.0.1:{ingress_port}");
    let api = spawn_with(
        "norn-api",
        db,
        tmp,
        "appsdir-api",
        port,
        &[("NORN_INGRESS_PORT", &ingress_port.to_string())],
    );
    let worker = spawn("norn-worker", db, tmp, "appsdir-worker", 0);
    let client = ProcApi::new(&format!("http://127.0.0.1:{port}")).await;
    (api, worker, client, ingress.parse().unwrap())
}

#[tokio::test]
async fn apps_under_norn_apps_dir_are_registered_at_start_and_deploy_without_a_repo() {
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let app = unique_app("appsdir");
    let dir = tmp.path().join("apps").join(&app);
    write_app_dir(&dir, &app, "served from NORN_APPS_DIR");
    // Neighbours that must not stop the others: an invalid spec, no spec.
    let broken = tmp.path().join("apps/broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("infraspec.yaml"), "name: Not Valid\n").unwrap();
    std::fs::create_dir_all(tmp.path().join("apps/no-spec")).unwrap();

    let (_api, _worker, api, ingress) = start_procs(&db, tmp.path()).await;
    let list = api.get("/api/apps").await;
    let apps = list.as_array().unwrap();
    assert_eq!(apps.len(), 1, "{list}");
    assert_eq!(apps[0]["id"], app.as_str(), "{list}");
    assert_eq!(apps[0]["source"], "apps_dir", "{list}");
    assert_eq!(
        apps[0]["sourceDir"],
        dir.canonicalize().unwrap().to_str().unwrap(),
        "{list}"
    );
    assert_eq!(apps[0]["spec"]["repo"], Value::Null, "{list}");

    let (code, body) = api
        .post(&format!("/api/apps/{app}/deploy"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["id"].as_str().unwrap();
    let d = api.wait_terminal(id, Duration::from_secs(180)).await;
    assert_eq!(d["status"], "deployed", "{d}");
    let clone = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "clone")
        .unwrap();
    assert!(
        clone["output"].as_str().unwrap().starts_with("copied "),
        "{d}"
    );
    let http = reqwest::Client::new();
    assert_eq!(
        ingress_get(&http, ingress, &app, "/").await.unwrap(),
        "served from NORN_APPS_DIR"
    );
    remove_containers(&app).await;
}

/// A directory without git is identified by its content (it used to be
/// `local<YYYYMMDDHHMMSS>` cut to 12 characters, so every deploy within about
/// ten days built the same tag and a rollback reused the newest image).
#[tokio::test]
async fn an_app_without_a_repo_redeploys_its_changed_directory_and_rolls_back_to_the_old_content() {
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let app = unique_app("norepo");
    let dir = tmp.path().join("apps").join(&app);
    write_app_dir(&dir, &app, "first");
    let (_api, _worker, api, ingress) = start_procs(&db, tmp.path()).await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for content in ["first", "second"] {
        std::fs::write(dir.join("www/index.html"), content).unwrap();
        let (code, body) = api
            .post(&format!("/api/apps/{app}/deploy"), json!({}))
            .await;
        assert_eq!(code, 202, "{body}");
        let id = body["id"].as_str().unwrap().to_owned();
        let d = api.wait_terminal(&id, Duration::from_secs(180)).await;
        assert_eq!(d["status"], "deployed", "{d}");
        assert_eq!(
            ingress_get(&http, ingress, &app, "/").await.unwrap(),
            content
        );
        ids.push(d);
    }
    let (code, body) = api
        .post(&format!("/api/apps/{app}/rollback"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    let d = api
        .wait_terminal(body["id"].as_str().unwrap(), Duration::from_secs(180))
        .await;
    assert_eq!(d["status"], "deployed", "{d}");
    assert_eq!(
        ingress_get(&http, ingress, &app, "/").await.unwrap(),
        "first",
        "the rollback reused image {} (releases: {} and {})",
        d["imageTag"],
        ids[0]["imageTag"],
        ids[1]["imageTag"]
    );
    remove_containers(&app).await;
}

/// Compose runs the ingress as a process of its own on the app network and
/// the API off it: `NORN_PORT=0` leaves the API out of a norn-api process.
#[tokio::test]
async fn an_ingress_only_process_routes_apps_and_serves_no_api() {
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let app = unique_app("ingressonly");
    write_app_dir(&tmp.path().join("apps").join(&app), &app, "via the ingress");
    let port = free_port();
    let _api = spawn("norn-api", &db, tmp.path(), "full-api", port);
    let api = ProcApi::new(&format!("http://127.0.0.1:{port}")).await;
    let ingress_port = free_port();
    let _ingress = spawn_with(
        "norn-api",
        &db,
        tmp.path(),
        "ingress-only",
        0,
        &[("NORN_INGRESS_PORT", &ingress_port.to_string())],
    );
    let _worker = spawn("norn-worker", &db, tmp.path(), "ingress-worker", 0);
    let ingress: std::net::SocketAddr = format!("127.0.0.1:{ingress_port}").parse().unwrap();

    let (code, body) = api
        .post(&format!("/api/apps/{app}/deploy"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    let d = api
        .wait_terminal(body["id"].as_str().unwrap(), Duration::from_secs(180))
        .await;
    assert_eq!(d["status"], "deployed", "{d}");
    let http = reqwest::Client::new();
    let served = eventually(Duration::from_secs(10), "the ingress routes", || async {
        ingress_get(&http, ingress, &app, "/").await.ok()
    })
    .await;
    assert_eq!(served, "via the ingress");

    // The API's routes are not on the ingress port, and the process is in
    // the fleet as an ingress.
    let resp = http
        .get(format!("http://{ingress}/api/apps"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(!resp.text().await.unwrap().contains(&app));
    let nodes = api.get("/api/cluster/nodes").await;
    let role = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "ingress-only")
        .map(|n| n["role"].clone());
    assert_eq!(role, Some(json!("ingress")), "{nodes}");
    remove_containers(&app).await;
}
