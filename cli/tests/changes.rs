//! `migrations.dir`: the deploy's migrate step runs Norn's change runner as
//! the app's own role. Real Postgres, Docker and git; witnesses are the app
//! database's rows and its tracking tables.

mod common;

use common::{AppRepo, Harness, unique_app};
use serde_json::json;

fn write(repo: &AppRepo, rel: &str, text: &str) {
    let p = repo.dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

async fn query<T>(url: &str, sql: &'static str) -> Vec<T>
where
    T: Send + Unpin + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
    pool.close().await;
    rows
}

#[tokio::test]
async fn a_deploy_applies_pending_changes_once_and_a_failed_change_is_undone_by_its_own_transaction()
 {
    let h = Harness::start().await;
    let app = unique_app("chg");
    let database = app.replace('-', "_");
    let app_db = norn_shared::db::with_database(&h.db_url, &database);
    let repo = AppRepo::create(h.tmp.path(), &app);
    write(
        &repo,
        "db/changes/2026-01-01-items/change/001.sql",
        "CREATE TABLE items (v text);\nINSERT INTO items VALUES ('v1');",
    );
    write(
        &repo,
        "db/changes/2026-01-01-items/revert/001.sql",
        "DROP TABLE items;",
    );
    repo.commit("v1");
    let spec = json!({
        "name": app,
        "repo": {"url": repo.url()},
        "processes": {"web": {"port": 8080, "health": {"path": "/health", "timeout": "2s"}}},
        "services": {"postgres": {"database": database}},
        "migrations": {"dir": "db/changes"},
    });
    let (code, body) = h.post("/api/apps", spec).await;
    assert_eq!(code, 201, "{body}");
    let v1 = h.deploy(&app, "HEAD").await;
    let d = h.wait_terminal(&v1).await;
    assert_eq!(d["status"], "deployed", "{d}");
    let migrate = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "migrate")
        .unwrap();
    let log = migrate["output"].as_str().unwrap();
    assert!(
        log.contains("change 2026-01-01-items (Applied")
            && log.contains("success 2026-01-01-items/change/001.sql"),
        "{log}"
    );
    let items: Vec<(String,)> = query(&app_db, "SELECT v FROM items ORDER BY v").await;
    assert_eq!(items, [("v1".to_owned(),)]);
    let by: Vec<(String, String)> = query(
        &app_db,
        "SELECT executed_by::text, status::text FROM __norn_change__",
    )
    .await;
    assert_eq!(by.len(), 1, "{by:?}");
    assert!(by[0].0.starts_with(&format!("deploy {v1} #")), "{by:?}");
    assert_eq!(by[0].1, "success");

    // A change whose second file fails: the deploy fails at migrate naming
    // the file, the transaction undid the first file, no snapshot is restored.
    write(
        &repo,
        "db/changes/2026-01-02-more/change/001.sql",
        "INSERT INTO items VALUES ('v2');",
    );
    write(
        &repo,
        "db/changes/2026-01-02-more/change/002.sql",
        "INSERT INTO nowhere VALUES (1);",
    );
    repo.commit("v2");
    let v2 = h.deploy(&app, "HEAD").await;
    let d = h.wait_terminal(&v2).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["failedStep"], "migrate");
    let error = d["error"].as_str().unwrap();
    assert!(error.contains("2026-01-02-more/change/002.sql"), "{error}");
    assert!(error.contains("nothing restored"), "{error}");
    let items: Vec<(String,)> = query(&app_db, "SELECT v FROM items ORDER BY v").await;
    assert_eq!(items, [("v1".to_owned(),)]);
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");
    let files: Vec<(String, String)> = query(
        &app_db,
        "SELECT e.status::text, e.skip_reason::text FROM __norn_executions__ e
         JOIN __norn_change__ c ON c.id = e.change_id WHERE c.name = '2026-01-02-more' ORDER BY e.id",
    )
    .await;
    assert_eq!(
        files,
        [("success".into(), "".into()), ("failed".into(), "".into())]
    );

    // Fixed: only the new change runs; the first is not run again.
    write(
        &repo,
        "db/changes/2026-01-02-more/change/002.sql",
        "SELECT 1;",
    );
    repo.commit("v3");
    let v3 = h.deploy(&app, "HEAD").await;
    assert_eq!(h.wait_terminal(&v3).await["status"], "deployed");
    let items: Vec<(String,)> = query(&app_db, "SELECT v FROM items ORDER BY v").await;
    assert_eq!(items, [("v1".to_owned(),), ("v2".to_owned(),)]);
    let first: Vec<(i64,)> = query(
        &app_db,
        "SELECT count(*) FROM __norn_change__ WHERE name = '2026-01-01-items'",
    )
    .await;
    assert_eq!(first, [(1,)]);
}

/// `norn changes` with `DATABASE_URL` set to `url`.
async fn local(url: &str, args: &[&str]) -> common::Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_norn"))
        .arg("changes")
        .args(args)
        .env("DATABASE_URL", url)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    common::Run {
        code: out.status.code().expect("norn was killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn norn_changes_runs_lists_dry_runs_and_rewinds_a_folder_against_database_url() {
    let url = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("changes");
    for (name, table) in [("2026-02-01-a", "ta"), ("2026-02-02-b", "tb")] {
        let change = dir.join(name);
        std::fs::create_dir_all(change.join("change")).unwrap();
        std::fs::create_dir_all(change.join("revert")).unwrap();
        std::fs::write(
            change.join("change/001.sql"),
            format!("CREATE TABLE {table} (id int);"),
        )
        .unwrap();
        std::fs::write(
            change.join("revert/001.sql"),
            format!("DROP TABLE {table};"),
        )
        .unwrap();
    }
    let d = dir.to_str().unwrap();
    let dry = local(&url, &["--dir", d, "dry-run"]).await;
    assert_eq!(dry.code, 0, "{dry}");
    assert!(dry.stdout.contains("CREATE TABLE ta (id int);"), "{dry}");
    let run = local(&url, &["--dir", d, "run"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("change 2026-02-02-b (Applied"), "{run}");
    let list = local(&url, &["--dir", d, "list"]).await;
    assert!(
        list.stdout.lines().all(|l| l.starts_with("applied")),
        "{list}"
    );
    let tables: Vec<(String,)> = query(
        &url,
        "SELECT tablename::text FROM pg_tables WHERE tablename IN ('ta', 'tb') ORDER BY 1",
    )
    .await;
    assert_eq!(tables, [("ta".to_owned(),), ("tb".to_owned(),)]);
    let rewind = local(&url, &["--dir", d, "rewind", "1"]).await;
    assert_eq!(rewind.code, 0, "{rewind}");
    let tables: Vec<(String,)> = query(
        &url,
        "SELECT tablename::text FROM pg_tables WHERE tablename IN ('ta', 'tb') ORDER BY 1",
    )
    .await;
    assert_eq!(tables, [("ta".to_owned(),)]);
    let never = local(&url, &["--dir", d, "revert", "2026-02-02-b"]).await;
    assert_eq!(never.code, 1, "{never}");
    assert!(never.stderr.contains("has not been applied"), "{never}");
    let unset = tokio::process::Command::new(env!("CARGO_BIN_EXE_norn"))
        .args(["changes", "--dir", d])
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(unset.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unset.stderr).contains("DATABASE_URL"));
}
