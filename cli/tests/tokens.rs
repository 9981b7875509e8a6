//! Named API tokens and roles against the real API process: every
//! operation of its OpenAPI document × every kind of caller gets 401, 403 or
//! through, as the operation's documented role says (the api crate's unit
//! tests check that the document lists every route of the router, with the
//! role `auth::required_role` gives it).

mod common;

use common::procs::{free_port, spawn_with, wait_api};
use common::{norn, unique_app};
use serde_json::{Value, json};

const BOOTSTRAP: &str = "bootstrap-admin-token-for-the-matrix";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    /// Anyone: the webhook receivers (a delivery's signature is its
    /// credential, so they answer 403 to an unsigned one, never 401).
    Open,
    Viewer,
    Deployer,
    Admin,
}

/// A concrete path for an operation of the document: `{id}` of an app
/// route is the app that exists; other ids are ones that do not.
fn concrete(path: &str, app: &str) -> String {
    let id = if path.starts_with("/api/apps/") {
        app
    } else if path.starts_with("/api/functions/") {
        "1"
    } else if path.starts_with("/api/webhooks/deliveries/") {
        "00000000-0000-0000-0000-000000000000"
    } else {
        "nope"
    };
    path.replace("{id}", id)
        .replace("{name}", "NOPE")
        .replace("{ts}", "20260101T000000")
        .replace("{path}", "some/path")
}

/// The least role of an operation, as its `security` says.
fn need(op: &Value) -> Need {
    let role = op["security"].as_array().and_then(|s| {
        s.iter()
            .find_map(|s| s["bearer"].as_array()?.first()?.as_str())
    });
    match role {
        None => Need::Open,
        Some("viewer") => Need::Viewer,
        Some("deployer") => Need::Deployer,
        Some("admin") => Need::Admin,
        Some(other) => panic!("unknown role {other} in the document"),
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
    db: String,
    pool: sqlx::PgPool,
    _proc: common::procs::Proc,
    _tmp: tempfile::TempDir,
}

impl Api {
    /// A real API process on a fresh database, with the bootstrap token set.
    async fn start(node: &str) -> Self {
        let db = norn_shared::testing::fresh_database().await;
        let pool = norn_shared::db::connect(&db, 2).await.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let proc = spawn_with(
            "norn-api",
            &db,
            tmp.path(),
            node,
            port,
            &[("NORN_API_TOKEN", BOOTSTRAP)],
        );
        let api = Api {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            db,
            pool,
            _proc: proc,
            _tmp: tmp,
        };
        wait_api(&api.http, &api.base).await;
        api
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        // A small valid-looking body: the matrix is about who, not what.
        let resp = req
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn make_token(&self, name: &str, role: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/api/tokens", self.base))
            .bearer_auth(BOOTSTRAP)
            .json(&json!({"name": name, "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let made: Value = resp.json().await.unwrap();
        made["token"].as_str().unwrap().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_each_kind_of_caller_as_the_role_table_says() {
    let api = Api::start("matrix-api").await;
    let pool = api.pool.clone();
    let app = unique_app("matrix");
    let spec = json!({"name": app, "processes": {"web": {"port": 8080}, "run": {"command": "cat", "function": {}}}});
    let resp = api
        .http
        .post(format!("{}/api/apps", api.base))
        .bearer_auth(BOOTSTRAP)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);

    let viewer = api.make_token("ci-viewer", "viewer").await;
    let deployer = api.make_token("ci-deployer", "deployer").await;
    let admin = api.make_token("ci-admin", "admin").await;
    let expired = api.make_token("ci-expired", "admin").await;
    sqlx::query(
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE name = 'ci-expired'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let revoked = api.make_token("ci-revoked", "admin").await;
    let (code, _) = api
        .call("DELETE", "/api/tokens/ci-revoked", Some(&admin))
        .await;
    assert_eq!(code, 200);

    let mut failures = Vec::new();
    let (code, doc) = api.call("GET", "/api/openapi.json", None).await;
    assert_eq!(code, 200, "the document is open");
    let mut operations = Vec::new();
    for (pattern, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations.push((method.to_uppercase(), concrete(pattern, &app), need(op)));
        }
    }
    assert!(operations.len() > 45, "{} operations", operations.len());
    for (method, path, need) in &operations {
        let (method, need) = (method.as_str(), *need);
        let callers: [(&str, Option<&str>, Option<Need>); 8] = [
            ("no token", None, None),
            ("a bad token", Some("norn_not-a-real-token"), None),
            ("an expired token", Some(&expired), None),
            ("a revoked token", Some(&revoked), None),
            ("viewer", Some(&viewer), Some(Need::Viewer)),
            ("deployer", Some(&deployer), Some(Need::Deployer)),
            ("admin", Some(&admin), Some(Need::Admin)),
            ("the bootstrap token", Some(BOOTSTRAP), Some(Need::Admin)),
        ];
        for (who, token, role) in callers {
            let (code, body) = api.call(method, path, token).await;
            let expected = match role {
                _ if need == Need::Open => "through",
                None => "401",
                Some(r) if r < need => "403",
                Some(_) => "through",
            };
            let got = match code {
                401 => "401",
                403 if need != Need::Open => "403",
                _ => "through",
            };
            let json_error = code >= 400 && body["error"].is_string();
            if got != expected || (code >= 400 && !json_error) || code >= 500 {
                failures.push(format!(
                    "{method} {path} as {who}: {code} {body}, expected {expected}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_is_shown_once_stored_only_as_a_hash_and_names_its_actions() {
    let api = Api::start("tokens-api").await;
    let (base, http, db, pool) = (
        api.base.clone(),
        api.http.clone(),
        api.db.clone(),
        api.pool.clone(),
    );

    // The CLI makes one: the token alone on stdout.
    let std_env = |args: &[&str]| {
        let mut all = vec!["--token", BOOTSTRAP];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let args = std_env(&[
        "tokens",
        "create",
        "release-bot",
        "--role",
        "deployer",
        "--expires-in",
        "30d",
    ]);
    let run = norn(&base, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(run.code, 0, "{run}");
    let token = run.stdout.trim().to_owned();
    assert!(token.starts_with("norn_") && token.len() > 40, "{run}");

    // Listed without the token; stored as its SHA-256 only.
    let list: Value = http
        .get(format!("{base}/api/tokens"))
        .bearer_auth(BOOTSTRAP)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["name"], "release-bot");
    assert_eq!(list[0]["role"], "deployer");
    assert!(list[0]["expiresAt"].is_string(), "{list}");
    assert!(
        !list.to_string().contains(&token),
        "the list shows the token"
    );
    let dump = common::pg_dump(&db).await;
    assert!(!dump.contains(&token), "the token is stored in plaintext");
    let (stored,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM api_tokens WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(&token)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);

    // What it does is recorded under its name; what it may not do, it cannot.
    let app = unique_app("tok");
    let spec = json!({"name": app, "processes": {"web": {"port": 8080}}});
    let resp = http
        .post(format!("{base}/api/apps"))
        .bearer_auth(BOOTSTRAP)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let resp = http
        .post(format!("{base}/api/apps/{app}/deploy"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let trail: Value = http
        .get(format!("{base}/api/deployments/{id}/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(trail[0]["actor"], "release-bot", "{trail}");
    let run = norn(&base, &["--token", &token, "tokens", "list"]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr.contains("needs admin") && run.stderr.contains("HTTP 403"),
        "{run}"
    );

    // Live events with it: the token as a subprotocol, never in the URL.
    let ws = |token: String| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("{}/ws", base.replacen("http", "ws", 1))
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            format!("norn, norn.bearer.{token}").parse().unwrap(),
        );
        async move {
            match tokio_tungstenite::connect_async(req).await {
                Ok((_, resp)) => Ok(resp
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().unwrap().to_owned())),
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                    Err(resp.status().as_u16())
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(ws(token.clone()).await, Ok(Some("norn".into())));

    // Revoked: refused at once.
    let args = std_env(&["tokens", "revoke", "release-bot"]);
    let run = norn(&base, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(run.code, 0, "{run}");
    let resp = http
        .get(format!("{base}/api/apps"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(ws(token.clone()).await, Err(401));

    // Bad requests name their field; a duplicate name is a 409.
    for (body, field) in [
        (json!({"name": "Bad Name", "role": "viewer"}), Some("name")),
        (json!({"name": "x", "role": "root"}), None),
        (
            json!({"name": "x", "role": "viewer", "expiresIn": "10y"}),
            Some("expiresIn"),
        ),
        (
            json!({"name": "x", "role": "viewer", "expiresAt": "2001-01-01T00:00:00Z"}),
            Some("expiresAt"),
        ),
    ] {
        let resp = http
            .post(format!("{base}/api/tokens"))
            .bearer_auth(BOOTSTRAP)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{body}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["field"].as_str(), field, "{body}: {answer}");
    }
    let resp = http
        .post(format!("{base}/api/tokens"))
        .bearer_auth(BOOTSTRAP)
        .json(&json!({"name": "release-bot", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
}
