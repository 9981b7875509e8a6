//! The forge of an app's services through the API: forge, the 409s, force,
//! teardown with and without dropData, and a forge failed at each step then
//! resumed. Witnessed in Postgres itself (roles, databases, a table the app
//! wrote) and on the live-event channel. Real Postgres, real worker processes.

mod common;

use std::time::Duration;

use common::procs::{self, ProcApi};
use common::{Harness, eventually, unique_app};
use serde_json::{Value, json};
use sqlx::postgres::PgListener;

/// An app with a database, KV and topics (no endpoints are declared: that
/// step is recorded skipped with the reason).
fn spec(app: &str) -> Value {
    json!({
        "name": app,
        "processes": {"web": {"port": 8080}},
        "services": {
            "postgres": {"database": app.replace('-', "_")},
            "kv": {"namespace": app},
            "events": {"topics": ["orders"]},
        },
    })
}

/// Waits until the app's forge state has `status` after an operation that
/// finished at a time other than `since` (the `finishedAt` seen before).
async fn wait_forge<F, Fut>(get: F, status: &str, since: &Value) -> Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    eventually(
        Duration::from_secs(60),
        &format!("forge {status}"),
        || async {
            let f = get().await;
            (f["status"] == status && f["finishedAt"] != *since).then_some(f)
        },
    )
    .await
}

/// (can log in, owns the database) for the app's role; `None` when it is gone.
async fn role(pool: &sqlx::PgPool, role: &str) -> Option<(bool, bool)> {
    sqlx::query_as(
        "SELECT r.rolcanlogin,
                EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = r.rolname AND d.datdba = r.oid)
         FROM pg_roles r WHERE r.rolname = $1",
    )
    .bind(role)
    .fetch_optional(pool)
    .await
    .unwrap()
}

fn step_statuses(f: &Value) -> Vec<(String, String)> {
    f["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(step: &str, status: &str) -> (String, String) {
    (step.to_owned(), status.to_owned())
}

#[tokio::test]
async fn forge_refuses_what_it_cannot_do_and_force_and_teardown_keep_or_drop_data() {
    let h = Harness::start().await;
    let admin = sqlx::PgPool::connect(&norn_shared::testing::with_database(&h.db_url, "postgres"))
        .await
        .unwrap();
    let mut events = PgListener::connect(&h.db_url).await.unwrap();
    events.listen("norn_events").await.unwrap();
    let app = unique_app("forge");
    let db = app.replace('-', "_");
    assert_eq!(h.post("/api/apps", spec(&app)).await.0, 201);
    let path = format!("/api/apps/{app}/forge");
    let get = || async { h.get(&path).await.1 };

    let before = get().await;
    assert_eq!(before["status"], "unforged", "{before}");
    let (code, body) = h
        .post(&format!("/api/apps/{app}/teardown"), json!({}))
        .await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(h.post("/api/apps/nope-404/forge", json!({})).await.0, 404);
    assert_eq!(h.post("/api/apps/Bad_Id/forge", json!({})).await.0, 400);
    assert_eq!(h.post(&path, json!({"forse": true})).await.0, 400);

    // Forge: the role owns its database and may log in.
    let (code, body) = h.post(&path, json!({})).await;
    assert_eq!(code, 202, "{body}");
    let forged = wait_forge(get, "forged", &before["finishedAt"]).await;
    assert_eq!(
        step_statuses(&forged),
        [
            pair("postgres", "complete"),
            pair("kv", "complete"),
            pair("events", "complete"),
            pair("endpoints", "skipped")
        ]
    );
    let kv_output = forged["steps"][1]["output"].as_str().unwrap();
    assert!(
        kv_output.contains(&format!(
            "user norn-kv-{app} created on keys and channels {app}:*"
        )),
        "{kv_output}"
    );
    assert_eq!(forged["resources"]["postgres"]["database"], db.as_str());
    assert_eq!(role(&admin, &db).await, Some((true, true)));
    let (code, body) = h.post(&path, json!({})).await;
    assert_eq!(code, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("force"), "{body}");

    // The app writes a table (as its own role).
    let app_db = sqlx::PgPool::connect(&norn_shared::testing::with_database(&h.db_url, &db))
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET ROLE {db}; CREATE TABLE kept (v int); INSERT INTO kept VALUES (7); RESET ROLE"
    )))
    .execute(&app_db)
    .await
    .unwrap();
    app_db.close().await;

    // Force: teardown keeping data, then forge again; the table is still there.
    let (code, body) = h.post(&path, json!({"force": true})).await;
    assert_eq!(code, 202, "{body}");
    let reforged = wait_forge(get, "forged", &forged["finishedAt"]).await;
    assert_eq!(role(&admin, &db).await, Some((true, true)));
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM saga_events WHERE saga_id = $1 AND action LIKE '%.complete' ORDER BY id",
    )
    .bind(format!("forge:{app}"))
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        actions,
        ["forge.complete", "teardown.complete", "forge.complete"]
    );
    assert_eq!(kept(&h.db_url, &db).await, Some(7));

    // Teardown: no login, sessions ended, data kept, credentials gone.
    let (code, body) = h
        .post(&format!("/api/apps/{app}/teardown"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    let torn = wait_forge(get, "unforged", &reforged["finishedAt"]).await;
    assert_eq!(role(&admin, &db).await, Some((false, true)), "{torn}");
    assert_eq!(kept(&h.db_url, &db).await, Some(7));
    let creds: i64 = sqlx::query_scalar("SELECT count(*) FROM service_credentials WHERE app = $1")
        .bind(&app)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(creds, 0);

    // dropData needs confirm; with it, database and role are gone.
    assert_eq!(h.post(&path, json!({})).await.0, 202);
    let again = wait_forge(get, "forged", &torn["finishedAt"]).await;
    let drop = format!("/api/apps/{app}/teardown?dropData=true");
    let (code, body) = h.post(&drop, json!({})).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("confirm")),
        "{body}"
    );
    assert_eq!(
        h.post(&format!("{drop}&confirm=true"), json!({})).await.0,
        202
    );
    wait_forge(get, "unforged", &again["finishedAt"]).await;
    assert_eq!(role(&admin, &db).await, None);
    assert_eq!(kept(&h.db_url, &db).await, None);

    // Every step and outcome went out live.
    let mut kinds = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
        let e: Value = serde_json::from_str(n.payload()).unwrap();
        if e["app"] == app.as_str() {
            kinds.push(e["type"].as_str().unwrap().to_owned());
        }
    }
    let count = |k: &str| kinds.iter().filter(|x| *x == k).count();
    // Forges: 3 (first, forced, again) and teardowns: 3 (forced, plain, dropData).
    assert_eq!(count("forge.completed"), 6, "{kinds:?}");
    assert_eq!(count("forge.step"), 24, "{kinds:?}");
    assert_eq!(count("forge.failed"), 0, "{kinds:?}");
}

/// The value in the app's `kept` table, or `None` when the database is gone.
async fn kept(server: &str, db: &str) -> Option<i32> {
    let pool = sqlx::PgPool::connect(&norn_shared::testing::with_database(server, db))
        .await
        .ok()?;
    let v = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&pool)
        .await
        .ok();
    pool.close().await;
    v
}

#[tokio::test]
async fn a_forge_failed_at_any_step_is_recorded_and_the_next_one_resumes_skipping_what_was_done() {
    let db = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = procs::free_port();
    let _api = procs::spawn("norn-api", &db, tmp.path(), "api", port);
    let api = ProcApi::new(&format!("http://127.0.0.1:{port}")).await;
    let kv = norn_shared::testing::kv_url().await;
    let brokers = norn_shared::testing::events_brokers().await;
    for failing in ["postgres", "kv", "events", "endpoints"] {
        let app = unique_app(&format!("ffail-{failing}"));
        assert_eq!(api.post("/api/apps", spec(&app)).await.0, 201);
        let path = format!("/api/apps/{app}/forge");
        let get = || async { api.get(&path).await };
        let broken = procs::spawn_with(
            "norn-worker",
            &db,
            tmp.path(),
            &format!("broken-{failing}"),
            0,
            &[
                ("NORN_TEST_FAIL_FORGE_STEP", failing),
                ("NORN_KV_URL", &kv),
                ("NORN_EVENTS_BROKERS", &brokers),
            ],
        );
        assert_eq!(api.post(&path, json!({})).await.0, 202);
        let failed = wait_forge(get, "forge_failed", &Value::Null).await;
        let error = failed["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("{failing}: failure injected")),
            "{failed}"
        );
        let recorded = step_statuses(&failed);
        assert_eq!(recorded.last(), Some(&pair(failing, "failed")), "{failed}");
        drop(broken);

        let _fixed = procs::spawn_with(
            "norn-worker",
            &db,
            tmp.path(),
            &format!("fixed-{failing}"),
            0,
            &[("NORN_KV_URL", &kv), ("NORN_EVENTS_BROKERS", &brokers)],
        );
        assert_eq!(api.post(&path, json!({})).await.0, 202);
        let forged = wait_forge(get, "forged", &failed["finishedAt"]).await;
        let postgres = &forged["steps"][0];
        if failing == "postgres" {
            assert_eq!(postgres["status"], "complete", "{forged}");
        } else {
            // Done by the failed forge: recorded skipped, not run again.
            assert_eq!(postgres["status"], "skipped", "{forged}");
            assert_eq!(postgres["output"], "done by an earlier forge", "{forged}");
        }
        // The step that failed ran this time (no endpoints are declared).
        let want = if failing == "endpoints" {
            "skipped"
        } else {
            "complete"
        };
        assert!(
            step_statuses(&forged).contains(&pair(failing, want)),
            "{forged}"
        );
        let (login, owns): (bool, bool) = sqlx::query_as(
            "SELECT r.rolcanlogin, EXISTS (SELECT 1 FROM pg_database d WHERE d.datdba = r.oid AND d.datname = r.rolname)
             FROM pg_roles r WHERE r.rolname = $1",
        )
        .bind(app.replace('-', "_"))
        .fetch_one(&sqlx::PgPool::connect(&db).await.unwrap())
        .await
        .unwrap();
        assert!(login && owns, "{app}");
        let trail: Vec<String> =
            sqlx::query_scalar("SELECT action FROM saga_events WHERE saga_id = $1 ORDER BY id")
                .bind(format!("forge:{app}"))
                .fetch_all(&sqlx::PgPool::connect(&db).await.unwrap())
                .await
                .unwrap();
        assert_eq!(
            trail,
            [
                "forge.queued",
                "forge.start",
                "forge.failed",
                "forge.queued",
                "forge.start",
                "forge.complete"
            ],
            "{app}"
        );
    }
}
