//! Pre-migration snapshots: taken before each migration, kept per
//! `snapshots.keep`, listed by the API, and restored automatically when the
//! migration fails. Real Postgres (pg_dump / pg_restore), Docker and git.

mod common;

use std::time::Duration;

use common::{AppRepo, Harness, unique_app};
use serde_json::json;

/// The app's migration, run by Norn in the migrate container as the app's
/// own role: inserts the version named in `www/migrate` (`ok/<v>` or
/// `fail/<v>`) into `items`, then exits 0 or 1 (a failing migration that
/// wrote before it failed).
const MIGRATION: &str = "v=$(busybox cat /www/migrate) && \
    psql -X -v ON_ERROR_STOP=1 \"$DATABASE_URL\" -c 'CREATE TABLE IF NOT EXISTS items (v TEXT)' \
      -c \"INSERT INTO items VALUES ('${v#*/}')\" && \
    case $v in ok/*) exit 0;; *) echo migration failed; exit 1;; esac";

async fn items(url: &str) -> Vec<String> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows: Vec<(String,)> = sqlx::query_as("SELECT v FROM items ORDER BY v")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.into_iter().map(|(v,)| v).collect()
}

fn release(repo: &AppRepo, migrate: &str, version: &str) -> String {
    std::fs::write(repo.dir.join("www/migrate"), migrate).unwrap();
    repo.commit(version)
}

#[tokio::test]
async fn a_failed_migration_restores_the_pre_migration_snapshot() {
    let h = Harness::start().await;
    let app = unique_app("snap");
    let database = app.replace('-', "_");
    let app_db = norn_shared::db::with_database(&h.db_url, &database);
    let repo = AppRepo::create_with_psql(h.tmp.path(), &app);
    release(&repo, "ok/v1", "v1");
    let spec = json!({
        "name": app,
        "repo": {"url": repo.url()},
        "processes": {"web": {"port": 8080, "health": {"path": "/health", "timeout": "2s"}}},
        "services": {"postgres": {"database": database}},
        "migrations": {"command": MIGRATION},
        "snapshots": {"keep": 1},
    });
    let (code, body) = h.post("/api/apps", spec).await;
    assert_eq!(code, 201, "{body}");
    let v1 = h.deploy(&app, "HEAD").await;
    assert_eq!(h.wait_terminal(&v1).await["status"], "deployed");
    assert_eq!(items(&app_db).await, ["v1"]);

    // The migration writes, then fails: the database goes back to the snapshot.
    let sha2 = release(&repo, "fail/v2", "v2");
    let v2 = h.deploy(&app, "HEAD").await;
    let d = h.wait_terminal(&v2).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["failedStep"], "migrate");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("database restored to its pre-migration snapshot"),
        "{error}"
    );
    let migrate_log = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "migrate")
        .unwrap()["output"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(migrate_log.contains("restored"), "{migrate_log}");
    // The dump a resumed attempt would restore is a field of the step.
    let snapshot_step = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "snapshot")
        .unwrap();
    let dumped = snapshot_step["snapshot"].as_str().unwrap_or_default();
    assert!(
        dumped.contains(&format!("_{}_", &sha2[..12])) && dumped.ends_with(".dump"),
        "{snapshot_step}"
    );
    assert_eq!(items(&app_db).await, ["v1"]);
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");

    let (code, body) = h.get(&format!("/api/apps/{app}/snapshots")).await;
    assert_eq!(code, 200, "{body}");
    let list = body["snapshots"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["commit"], &sha2[..12]);
    assert_eq!(list[0]["database"], database.as_str());
    let first_ts = list[0]["timestamp"].as_str().unwrap().to_owned();

    // A later snapshot pushes the older one out (keep: 1).
    tokio::time::sleep(Duration::from_millis(1100)).await; // timestamps have 1 s resolution
    let sha3 = release(&repo, "ok/v3", "v3");
    let v3 = h.deploy(&app, "HEAD").await;
    assert_eq!(h.wait_terminal(&v3).await["status"], "deployed");
    assert_eq!(items(&app_db).await, ["v1", "v3"]);
    let (_, body) = h.get(&format!("/api/apps/{app}/snapshots")).await;
    let list = body["snapshots"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["commit"], &sha3[..12]);
    assert_ne!(list[0]["timestamp"], first_ts.as_str());

    let (code, _) = h
        .get(&format!("/api/apps/{}/snapshots", unique_app("ghost")))
        .await;
    assert_eq!(code, 404);

    // Restore on request: refused without confirm, then run as a job.
    let ts = list[0]["timestamp"].as_str().unwrap().to_owned();
    let restore = format!("/api/apps/{app}/snapshots/{ts}/restore");
    let (code, body) = h.post(&restore, json!({})).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("confirm")),
        "{body}"
    );
    let (code, body) = h.post(&format!("{restore}?confirm=maybe"), json!({})).await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = h
        .post(
            &format!("/api/apps/{app}/snapshots/20000101T000000/restore?confirm=true"),
            json!({}),
        )
        .await;
    assert_eq!(code, 404);
    assert_eq!(items(&app_db).await, ["v1", "v3"]);
    let (code, body) = h
        .post(
            &format!("{restore}?confirm=true&preRestore=true"),
            json!({}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let (r, body) = common::eventually(Duration::from_secs(60), "restore finished", || async {
        let (_, body) = h.get(&format!("/api/apps/{app}/snapshots")).await;
        let r = body["restores"]
            .as_array()?
            .iter()
            .find(|r| r["id"] == id.as_str())?
            .clone();
        matches!(r["status"].as_str(), Some("completed" | "failed")).then_some((r, body))
    })
    .await;
    assert_eq!(r["status"], "completed", "{r}");
    // v3's snapshot was taken before v3 migrated: v1 only.
    assert_eq!(items(&app_db).await, ["v1"]);
    // The pre-restore dump holds what was there before, and is listed.
    let pre = r["preRestoreFile"].as_str().unwrap();
    assert!(std::path::Path::new(pre).exists(), "{r}");
    let commits: Vec<&str> = body["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["commit"].as_str().unwrap())
        .collect();
    assert!(commits.contains(&"prerestore"), "{body}");
}
