//! `migrations.dir`: the deploy's migrate step runs Norn's change runner as
//! the app's own role. Real Postgres, Docker and git; witnesses are the app
//! database's rows and its tracking tables.

mod common;

use std::time::Duration;

use common::{AppRepo, Harness, unique_app};
use serde_json::json;

fn write(repo: &AppRepo, rel: &str, text: &str) {
    let p = repo.dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Registers `app` from `repo` with its database and `migrations.dir: db/changes`.
async fn register(h: &Harness, app: &str, repo: &AppRepo, database: &str) {
    let spec = json!({
        "name": app,
        "repo": {"url": repo.url()},
        "processes": {"web": {"port": 8080, "health": {"path": "/health", "timeout": "2s"}}},
        "services": {"postgres": {"database": database}},
        "migrations": {"dir": "db/changes"},
    });
    let (code, body) = h.post("/api/apps", spec).await;
    assert_eq!(code, 201, "{body}");
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
    register(&h, &app, &repo, &database).await;
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

    // An applied change edited: drift fails the deploy before anything runs,
    // so the snapshot is not restored (that would only lose newer writes).
    write(
        &repo,
        "db/changes/2026-01-01-items/change/001.sql",
        "CREATE TABLE items (v text, w text);",
    );
    repo.commit("v4");
    let v4 = h.deploy(&app, "HEAD").await;
    let d = h.wait_terminal(&v4).await;
    assert_eq!(
        (d["status"].as_str(), d["failedStep"].as_str()),
        (Some("failed"), Some("migrate")),
        "{d}"
    );
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("edited after it ran") && error.contains("nothing restored"),
        "{error}"
    );
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

/// A change folder `2026-03-0N-<table>` creating and dropping `table`.
fn table_change(repo: &AppRepo, day: u32, table: &str) {
    let name = format!("2026-03-{day:02}-{table}");
    write(
        repo,
        &format!("db/changes/{name}/change/001.sql"),
        &format!("CREATE TABLE {table} (id int);"),
    );
    write(
        repo,
        &format!("db/changes/{name}/revert/001.sql"),
        &format!("DROP TABLE {table};"),
    );
}

async fn tables(url: &str) -> Vec<String> {
    let rows: Vec<(String,)> = query(
        url,
        "SELECT tablename::text FROM pg_tables WHERE tablename IN ('ta', 'tb') ORDER BY 1",
    )
    .await;
    rows.into_iter().map(|(t,)| t).collect()
}

#[tokio::test]
async fn the_api_lists_reverts_rewinds_and_runs_an_apps_changes_on_its_deployed_commit() {
    let h = Harness::start().await;
    let app = unique_app("chapi");
    let database = app.replace('-', "_");
    let app_db = norn_shared::db::with_database(&h.db_url, &database);
    let repo = AppRepo::create(h.tmp.path(), &app);
    table_change(&repo, 1, "ta");
    table_change(&repo, 2, "tb");
    let sha = repo.commit("v1");
    let base = format!("/api/apps/{app}/changes");
    register(&h, &app, &repo, &database).await;
    // Nothing deployed yet: nothing to read the folder from.
    let (code, body) = h.post(&format!("{base}/run"), json!({})).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("deploy it first"),
        "{body}"
    );
    let d = h.wait_terminal(&h.deploy(&app, "HEAD").await).await;
    assert_eq!(d["status"], "deployed", "{d}");

    // The deploy's migrate step recorded every change's status.
    let (code, overview) = h.get(&base).await;
    assert_eq!(code, 200, "{overview}");
    assert_eq!(overview["commitSha"], sha.as_str(), "{overview}");
    let states: Vec<(&str, &str)> = overview["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [("2026-03-01-ta", "applied"), ("2026-03-02-tb", "applied")]
    );
    assert_eq!(overview["runs"][0]["action"], "deploy", "{overview}");

    // Refused before anything is queued.
    let (code, body) = h
        .post(&format!("{base}/2026-03-02-tb/revert"), json!({}))
        .await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("confirm")),
        "{body}"
    );
    let (code, body) = h
        .post(&format!("{base}/nope/revert?confirm=true"), json!({}))
        .await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("name")),
        "{body}"
    );
    let (code, body) = h
        .post(
            &format!("{base}/2026-09-09-none/revert?confirm=true"),
            json!({}),
        )
        .await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = h
        .post(&format!("{base}/rewind?count=0&confirm=true"), json!({}))
        .await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("count")),
        "{body}"
    );

    // Revert through the CLI: a worker runs it on the deployed commit.
    let revert = common::norn(&h.api, &["changes", &app, "revert", "2026-03-02-tb"]).await;
    assert_eq!(revert.code, 1, "{revert}");
    assert!(revert.stderr.contains("--yes"), "{revert}");
    let revert = common::norn(
        &h.api,
        &["changes", &app, "revert", "2026-03-02-tb", "--yes"],
    )
    .await;
    assert_eq!(revert.code, 0, "{revert}");
    assert!(
        revert.stdout.contains("revert 2026-03-02-tb (Reverted"),
        "{revert}"
    );
    assert_eq!(tables(&app_db).await, ["ta"]);
    let list = common::norn(&h.api, &["changes", &app]).await;
    assert!(list.stdout.contains("reverted  2026-03-02-tb"), "{list}");
    assert!(list.stdout.contains(&sha[..12]), "{list}");
    let (code, body) = h
        .post(
            &format!("{base}/2026-03-02-tb/revert?confirm=true"),
            json!({}),
        )
        .await;
    assert_eq!(code, 409, "{body}");

    // A dry run shows the SQL and changes nothing; a run applies it again.
    let dry = common::norn(&h.api, &["changes", &app, "dry-run"]).await;
    assert_eq!(dry.code, 0, "{dry}");
    assert!(dry.stdout.contains("CREATE TABLE tb (id int);"), "{dry}");
    assert_eq!(tables(&app_db).await, ["ta"]);
    let run = common::norn(&h.api, &["changes", &app, "run"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains("change 2026-03-02-tb (Applied"),
        "{run}"
    );
    assert_eq!(tables(&app_db).await, ["ta", "tb"]);

    // Rewind 2: newest first, both gone; recorded in the app database.
    let rewind = common::norn(&h.api, &["changes", &app, "rewind", "2", "--yes"]).await;
    assert_eq!(rewind.code, 0, "{rewind}");
    assert!(tables(&app_db).await.is_empty());
    let reverts: Vec<(String,)> = query(
        &app_db,
        "SELECT name::text FROM __norn_change__ WHERE direction = 'revert' ORDER BY id",
    )
    .await;
    let names: Vec<&str> = reverts.iter().map(|(n,)| n.as_str()).collect();
    assert_eq!(names, ["2026-03-02-tb", "2026-03-02-tb", "2026-03-01-ta"]);
    let by: Vec<(String,)> = query(
        &app_db,
        "SELECT executed_by::text FROM __norn_change__ ORDER BY id DESC LIMIT 1",
    )
    .await;
    assert!(by[0].0.contains("via api (run "), "{by:?}");

    // A status check reads the database again.
    let check = common::norn(&h.api, &["changes", &app, "check"]).await;
    assert_eq!(check.code, 0, "{check}");
    assert_eq!(
        check
            .stdout
            .lines()
            .filter(|l| l.starts_with("reverted"))
            .count(),
        2,
        "{check}"
    );
    let (_, overview) = h.get(&base).await;
    assert_eq!(overview["runs"][0]["action"], "status", "{overview}");
    assert_eq!(overview["runs"][0]["status"], "succeeded", "{overview}");
}

#[tokio::test]
async fn a_deploy_waits_for_a_developers_change_lock_says_who_holds_it_then_applies() {
    let h = Harness::start().await;
    let app = unique_app("chlock");
    let database = app.replace('-', "_");
    let app_db = norn_shared::db::with_database(&h.db_url, &database);
    let repo = AppRepo::create(h.tmp.path(), &app);
    table_change(&repo, 1, "ta");
    repo.commit("v1");
    register(&h, &app, &repo, &database).await;
    let v1 = h.deploy(&app, "HEAD").await;
    assert_eq!(h.wait_terminal(&v1).await["status"], "deployed");

    // A developer's runner holds the database's change lock.
    use sqlx::Connection;
    let mut dev = sqlx::PgConnection::connect(&app_db).await.unwrap();
    let held = "norn changes (dev@laptop pid 42)";
    norn_shared::db::changes::try_lock(
        &mut dev,
        &database,
        held,
        Duration::from_secs(300),
        "apply",
    )
    .await
    .unwrap()
    .unwrap();
    table_change(&repo, 2, "tb");
    repo.commit("v2");
    let v2 = h.deploy(&app, "HEAD").await;
    let logs = format!("{}/api/deployments/{v2}/logs?step=migrate", h.api);
    let said = common::eventually(
        Duration::from_secs(90),
        "the deploy waiting on the lock",
        || async {
            let text = h.http.get(&logs).send().await.ok()?.text().await.ok()?;
            text.contains("is held by").then_some(text)
        },
    )
    .await;
    assert!(said.contains(held), "{said}");
    // It waits: the change has not run while the developer holds the lock.
    assert_eq!(tables(&app_db).await, ["ta"]);
    let d: serde_json::Value = h.get(&format!("/api/deployments/{v2}")).await.1;
    assert_eq!(d["status"], "migrating", "{d}");

    norn_shared::db::changes::unlock(&mut dev, &database, held)
        .await
        .unwrap();
    let d = h.wait_terminal(&v2).await;
    assert_eq!(d["status"], "deployed", "{d}");
    assert_eq!(tables(&app_db).await, ["ta", "tb"]);
}
