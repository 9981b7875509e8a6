//! App secrets: set through the API, sealed at rest, injected into the
//! app's own containers, and shown as `***` everywhere Norn keeps or streams
//! output (build and test step logs, cron output, live events), never in a
//! dump of Norn's database. Real Postgres, Docker and git.

mod common;

use std::time::Duration;

use common::{AppRepo, Harness, all_containers, eventually, exec_in, unique_app};
use futures::StreamExt;
use serde_json::{Value, json};

const VALUE: &str = "s3cr3t-VALUE-xyzzy-42";

#[tokio::test]
async fn a_secret_reaches_its_app_containers_and_is_masked_everywhere_else() {
    let h = Harness::start().await;
    h.spawn_scheduler();
    let app = unique_app("secret");
    let repo = AppRepo::create(h.tmp.path(), &app);
    // The build prints a file of the repository; from v2 on (once the secret
    // is set) it holds the value, so the build log has it to mask.
    std::fs::write(repo.dir.join("www/leak"), "build saw nothing yet\n").unwrap();
    let dockerfile = std::fs::read_to_string(repo.dir.join("Dockerfile")).unwrap();
    std::fs::write(
        repo.dir.join("Dockerfile"),
        dockerfile.replace(
            "COPY www /www\n",
            "COPY www /www\nRUN [\"/bin/busybox\", \"cat\", \"/www/leak\"]\n",
        ),
    )
    .unwrap();
    repo.commit("v1");
    let spec = json!({
        "name": app,
        "repo": {"url": repo.url()},
        "build": {"test": "echo test=$API_KEY"},
        "secrets": ["API_KEY"],
        "processes": {
            "web": {"port": 8080, "health": {"path": "/health", "timeout": "2s"}},
            "job": {"schedule": "*/2 * * * * *", "command": "echo cron=$API_KEY", "cron": {"overlap": "allow"}},
        },
    });
    assert_eq!(h.post("/api/apps", spec).await.0, 201);

    // A spec listing a secret nobody set cannot start a container.
    let id = h.deploy(&app, "HEAD").await;
    let d = h.wait_terminal(&id).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["failedStep"], "test", "{d}");
    assert!(
        d["error"].as_str().unwrap().contains("not set: API_KEY"),
        "{d}"
    );

    // Bad names and Norn's own names are refused; nothing is stored.
    for bad in ["lower", "DATABASE_URL", "NORN_TOKEN", "1ST"] {
        let (code, body) = h
            .put(&format!("/api/apps/{app}/secrets"), json!({ bad: "x" }))
            .await;
        assert_eq!((code, body["field"].as_str()), (400, Some(bad)), "{body}");
    }
    let (code, body) = h
        .put(
            &format!("/api/apps/{app}/secrets"),
            json!({"API_KEY": VALUE, "OLD": "gone soon"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, list) = h.get(&format!("/api/apps/{app}/secrets")).await;
    assert_eq!(code, 200);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(!list.to_string().contains(VALUE), "{list}");
    let delete = |name: &str| {
        h.http
            .delete(format!("{}/api/apps/{app}/secrets/{name}", h.api))
            .send()
    };
    assert_eq!(delete("OLD").await.unwrap().status().as_u16(), 204);
    assert_eq!(delete("OLD").await.unwrap().status().as_u16(), 404);

    // Deploy a new commit (so the build runs again, printing the value) with
    // a live-event subscriber.
    std::fs::write(repo.dir.join("www/leak"), format!("build saw {VALUE}\n")).unwrap();
    repo.commit("v2");
    let ws_url = format!("{}/ws?app={app}", h.api.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let id = h.deploy(&app, "HEAD").await;
    let d = h.wait_terminal(&id).await;
    assert_eq!(d["status"], "deployed", "{d}");

    // In the app's container, the real value.
    let instance = all_containers()
        .await
        .into_iter()
        .find(|c| {
            c.labels.as_ref().is_some_and(|l| {
                l.get("norn.app") == Some(&app)
                    && l.get("norn.process").map(String::as_str) == Some("web")
            })
        })
        .expect("the web instance");
    let name = instance.names.unwrap()[0]
        .trim_start_matches('/')
        .to_owned();
    let (_, env) = exec_in(&name, "echo \"$API_KEY\"").await;
    assert_eq!(env.trim(), VALUE);

    // Everywhere Norn keeps output: masked.
    let step = |s: &str| {
        d["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["step"] == s)
            .unwrap()["output"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(step("test").contains("test=***"), "{}", step("test"));
    assert!(step("build").contains("build saw ***"), "{}", step("build"));
    let logs = h
        .http
        .get(format!("{}/api/deployments/{id}/logs", h.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        logs.contains("test=***") && logs.contains("build saw ***"),
        "{logs}"
    );
    assert!(!logs.contains(VALUE));
    assert!(!d.to_string().contains(VALUE), "{d}");
    let output: String = eventually(Duration::from_secs(60), "a cron run", || async {
        sqlx::query_scalar(
            "SELECT output FROM cron_executions WHERE app = $1 AND status = 'completed' LIMIT 1",
        )
        .bind(&app)
        .fetch_optional(&h.pool)
        .await
        .unwrap()
    })
    .await;
    assert!(output.contains("cron=***"), "{output}");

    // Live events of the deploy: some carry the masked output, none the value.
    let mut frames = Vec::new();
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_millis(500), ws.next()).await
    {
        frames.push(frame.to_string());
    }
    assert!(frames.iter().any(|f| f.contains("test=***")), "{frames:?}");
    assert!(
        frames.iter().all(|f| !f.contains(VALUE)),
        "a frame has the value"
    );

    // Norn's whole database, dumped: sealed only.
    let dump = common::pg_dump(&h.db_url).await;
    assert!(dump.contains("app_secrets") && dump.contains("cron=***"));
    assert!(
        !dump.contains(VALUE),
        "the secret is in Norn's database in plaintext"
    );
}

#[tokio::test]
async fn rotate_key_reseals_values_sealed_with_the_previous_key() {
    use norn_shared::crypto::SecretKey;
    let old = SecretKey::parse(&SecretKey::generate()).unwrap();
    let new = SecretKey::parse(&SecretKey::generate()).unwrap();
    let (old2, new2) = (old.clone(), new.clone());
    let h = Harness::start_with(move |c| {
        c.secret_key = Some(new2);
        c.previous_keys = vec![old2];
    })
    .await;
    let app = unique_app("rotate");
    let body = json!({"name": app, "processes": {"web": {"port": 8080}}});
    assert_eq!(h.post("/api/apps", body).await.0, 201);
    // Set before the rotation: sealed with the old key.
    let mut conn = h.pool.acquire().await.unwrap();
    norn_shared::db::secrets::put(
        &mut conn,
        &app,
        "TOKEN",
        &old.seal("before-rotation").unwrap(),
    )
    .await
    .unwrap();
    norn_shared::db::webhooks::put_secret(
        &mut conn,
        &app,
        &old.seal("webhook-before-rotation").unwrap(),
        "test",
    )
    .await
    .unwrap();
    let (code, done) = h.post("/api/secrets/rotate", json!({})).await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["resealed"], 2, "{done}");
    assert_eq!(done["keyId"], new.id());
    // The webhook secret too: still the same secret, under the new key.
    let hook = norn_shared::db::webhooks::secret(&mut conn, &app)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.open(&hook).unwrap(), "webhook-before-rotation");
    let sealed = norn_shared::db::secrets::sealed(&mut conn, &app)
        .await
        .unwrap();
    assert_eq!(sealed[0].1.key_id, new.id());
    assert_eq!(new.open(&sealed[0].1).unwrap(), "before-rotation");
    assert!(old.open(&sealed[0].1).is_err());
    // Nothing left to do the second time.
    let (_, again) = h.post("/api/secrets/rotate", json!({})).await;
    assert_eq!(again["resealed"], 0, "{again}");
}

/// The API without a key refuses to store a secret rather than store it plain.
#[tokio::test]
async fn without_a_key_secrets_are_refused_not_stored() {
    let h = Harness::start_with(|c| c.secret_key = None).await;
    let app = unique_app("nokey");
    let body = json!({"name": app, "processes": {"web": {"port": 8080}}});
    assert_eq!(h.post("/api/apps", body).await.0, 201);
    let (code, body): (u16, Value) = h
        .put(
            &format!("/api/apps/{app}/secrets"),
            json!({"TOKEN": "x-value"}),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("NORN_SECRET_KEY"),
        "{body}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM app_secrets")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}
