//! The change runner against a real Postgres: each test its own database,
//! its own migrations folder in a temp dir. Outside witnesses: the tables
//! the changes make (information_schema) and the tracking rows.

use std::path::Path;
use std::time::Duration;

use norn_shared::changes::{self, Direction, Options, Outcome, RunError, State, Wait};
use norn_shared::db::changes as track;
use sqlx::{Connection, PgConnection};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// `count` changes, each making table `t<i>` and dropping it on revert.
fn folder(count: usize) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for i in 1..=count {
        let name = format!("2026-01-{i:02}-table-{i}");
        write(
            tmp.path(),
            &format!("{name}/change/001.sql"),
            &format!("CREATE TABLE t{i} (id int);"),
        );
        write(
            tmp.path(),
            &format!("{name}/revert/001.sql"),
            &format!("DROP TABLE t{i};"),
        );
    }
    tmp
}

async fn database() -> PgConnection {
    let url = norn_shared::testing::fresh_database().await;
    PgConnection::connect(&url).await.unwrap()
}

fn opts(holder: &str) -> Options {
    Options {
        holder: holder.into(),
        app: "shop".into(),
        scope: "shop".into(),
        lock_ttl: changes::LOCK_TTL,
        wait: None,
    }
}

async fn tables(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name ~ '^t[0-9]+$' ORDER BY table_name",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

async fn rows(conn: &mut PgConnection) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT name::text, direction::text, status::text FROM __norn_change__ ORDER BY id",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn changes_apply_once_in_order_and_a_second_run_skips_them_all() {
    let mut conn = database().await;
    let dir = folder(3);
    let loaded = changes::disk::load(dir.path()).unwrap();
    let runs = changes::apply(&mut conn, &loaded, &opts("deploy-1"), false)
        .await
        .unwrap();
    assert!(
        runs.iter().all(|r| r.outcome == Outcome::Applied),
        "{runs:#?}"
    );
    assert_eq!(tables(&mut conn).await, ["t1", "t2", "t3"]);
    let again = changes::apply(&mut conn, &loaded, &opts("deploy-2"), false)
        .await
        .unwrap();
    assert!(
        again.iter().all(|r| r.outcome == Outcome::Skipped),
        "{again:#?}"
    );
    assert!(again[0].files[0].skip_reason.as_deref() == Some("already-run"));
    assert_eq!(rows(&mut conn).await.len(), 3, "a skip records nothing");
    let version: i32 = sqlx::query_scalar("SELECT schema_version FROM __norn_version__")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, track::SCHEMA_VERSION);
    let states = changes::status(&mut conn, &loaded).await.unwrap();
    assert!(states.iter().all(|s| s.state == State::Applied));
    assert_eq!(states[0].applied_by.as_deref(), Some("deploy-1"));
}

#[tokio::test]
async fn an_edited_applied_change_is_drift_and_nothing_runs_unless_forced() {
    let mut conn = database().await;
    let dir = folder(1);
    let loaded = changes::disk::load(dir.path()).unwrap();
    changes::apply(&mut conn, &loaded, &opts("a"), false)
        .await
        .unwrap();
    write(
        dir.path(),
        "2026-01-01-table-1/change/001.sql",
        "CREATE TABLE IF NOT EXISTS t1 (id bigint);",
    );
    write(
        dir.path(),
        "2026-01-02-later/change/001.sql",
        "CREATE TABLE t2 (id int);",
    );
    let loaded = changes::disk::load(dir.path()).unwrap();
    let err = changes::apply(&mut conn, &loaded, &opts("a"), false)
        .await
        .unwrap_err();
    match &err {
        RunError::Drift { change, files } => {
            assert_eq!(change, "2026-01-01-table-1");
            assert_eq!(files, &["2026-01-01-table-1/change/001.sql"]);
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        tables(&mut conn).await,
        ["t1"],
        "the later change must not run: {err}"
    );
    let states = changes::status(&mut conn, &loaded).await.unwrap();
    assert_eq!(states[0].state, State::Drifted);
    assert_eq!(states[1].state, State::Pending);
    let runs = changes::apply(&mut conn, &loaded, &opts("a"), true)
        .await
        .unwrap();
    assert_eq!(runs.len(), 2);
    assert!(
        runs.iter().all(|r| r.outcome == Outcome::Applied),
        "{runs:#?}"
    );
    assert_eq!(tables(&mut conn).await, ["t1", "t2"]);

    // A renamed file (same bytes, so the same change checksum) changes the
    // order the files run in: drift too, naming both names.
    std::fs::rename(
        dir.path().join("2026-01-02-later/change/001.sql"),
        dir.path().join("2026-01-02-later/change/000.sql"),
    )
    .unwrap();
    let loaded = changes::disk::load(dir.path()).unwrap();
    match changes::apply(&mut conn, &loaded, &opts("a"), false).await {
        Err(RunError::Drift { change, files }) => {
            assert_eq!(change, "2026-01-02-later");
            assert_eq!(
                files,
                [
                    "2026-01-02-later/change/000.sql",
                    "2026-01-02-later/change/001.sql (removed)"
                ]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_failing_file_rolls_its_change_back_and_the_rest_are_skipped() {
    let mut conn = database().await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        root,
        "2026-01-01-ok/change/001.sql",
        "CREATE TABLE t1 (id int);",
    );
    write(
        root,
        "2026-01-02-broken/change/001.sql",
        "CREATE TABLE t2 (id int);",
    );
    write(
        root,
        "2026-01-02-broken/change/002.sql",
        "INSERT INTO nowhere VALUES (1);",
    );
    write(
        root,
        "2026-01-02-broken/change/003.sql",
        "CREATE TABLE t3 (id int);",
    );
    write(
        root,
        "2026-01-03-after/change/001.sql",
        "CREATE TABLE t4 (id int);",
    );
    let loaded = changes::disk::load(root).unwrap();
    let runs = changes::apply(&mut conn, &loaded, &opts("a"), false)
        .await
        .unwrap();
    assert_eq!(
        runs.len(),
        2,
        "the run stops at the failed change: {runs:#?}"
    );
    let failed = &runs[1];
    assert_eq!(failed.outcome, Outcome::Failed);
    let error = failed.error.as_deref().unwrap();
    assert!(
        error.contains("002.sql") && error.contains("nowhere") && error.contains("rolled back"),
        "{error}"
    );
    assert_eq!(
        tables(&mut conn).await,
        ["t1"],
        "nothing of the failed change stays"
    );
    let files: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT e.filepath::text, e.status::text, e.skip_reason::text FROM __norn_executions__ e
         JOIN __norn_change__ c ON c.id = e.change_id WHERE c.name = '2026-01-02-broken' ORDER BY e.id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let statuses: Vec<(&str, &str)> = files
        .iter()
        .map(|(_, s, r)| (s.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("success", ""),
            ("failed", ""),
            ("skipped", "changeset failed")
        ]
    );
    assert_eq!(rows(&mut conn).await[1].2, "failed");

    // Without a transaction, the files before the failure stay.
    write(
        root,
        "2026-01-02-broken/change/000.sql",
        "-- norn:no-transaction\nSELECT 1;",
    );
    let loaded = changes::disk::load(root).unwrap();
    let runs = changes::apply(&mut conn, &loaded, &opts("a"), false)
        .await
        .unwrap();
    assert!(!runs[1].transactional);
    assert_eq!(runs[1].outcome, Outcome::Failed);
    assert_eq!(tables(&mut conn).await, ["t1", "t2"]);
}

#[tokio::test]
async fn revert_and_rewind_undo_changes_and_are_recorded() {
    let mut conn = database().await;
    let dir = folder(4);
    let loaded = changes::disk::load(dir.path()).unwrap();
    let o = opts("a");
    // Reverting what never ran is an error.
    let err = changes::revert(&mut conn, &loaded, "2026-01-01-table-1", &o)
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::NotApplied(_)), "{err}");
    changes::apply(&mut conn, &loaded, &o, false).await.unwrap();
    let run = changes::revert(&mut conn, &loaded, "2026-01-02-table-2", &o)
        .await
        .unwrap();
    assert_eq!(run.outcome, Outcome::Reverted);
    assert_eq!(run.direction, Direction::Revert);
    assert_eq!(tables(&mut conn).await, ["t1", "t3", "t4"]);
    let r = rows(&mut conn).await;
    assert!(
        r.contains(&(
            "2026-01-02-table-2".into(),
            "change".into(),
            "reverted".into()
        )),
        "{r:?}"
    );
    assert!(
        r.contains(&(
            "2026-01-02-table-2".into(),
            "revert".into(),
            "success".into()
        )),
        "{r:?}"
    );
    let err = changes::revert(&mut conn, &loaded, "2026-01-02-table-2", &o)
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::NotApplied(_)), "{err}");
    let runs = changes::rewind(&mut conn, &loaded, 2, &o).await.unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["2026-01-04-table-4", "2026-01-03-table-3"]);
    assert_eq!(tables(&mut conn).await, ["t1"]);
    // A reverted change is pending again: applying brings it back.
    changes::apply(&mut conn, &loaded, &o, false).await.unwrap();
    assert_eq!(tables(&mut conn).await, ["t1", "t2", "t3", "t4"]);
}

#[tokio::test]
async fn a_held_lock_names_its_holder_and_a_waiting_runner_gets_it_once_free() {
    let url = norn_shared::testing::fresh_database().await;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let dir = folder(3);
    let loaded = changes::disk::load(dir.path()).unwrap();
    track::ensure(&mut conn).await.unwrap();
    track::try_lock(
        &mut conn,
        "shop",
        "deploy-7",
        Duration::from_secs(60),
        "apply",
    )
    .await
    .unwrap()
    .unwrap();
    let err = changes::apply(&mut conn, &loaded, &opts("cli"), false)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RunError::Locked { .. }) && text.contains("deploy-7"),
        "{text}"
    );
    assert!(tables(&mut conn).await.is_empty());
    // Re-entrant for its holder.
    changes::apply(&mut conn, &loaded, &opts("deploy-7"), false)
        .await
        .unwrap();
    changes::revert(&mut conn, &loaded, "2026-01-03-table-3", &opts("deploy-7"))
        .await
        .unwrap();

    // Two runners at once, both waiting: each change runs exactly once.
    let mut other = PgConnection::connect(&url).await.unwrap();
    let waiting = |holder: &str| Options {
        wait: Some(Wait {
            timeout: Duration::from_secs(30),
            poll: Duration::from_millis(20),
        }),
        ..opts(holder)
    };
    let (one, two) = (waiting("one"), waiting("two"));
    let (a, b) = tokio::join!(
        changes::apply(&mut conn, &loaded, &one, false),
        changes::apply(&mut other, &loaded, &two, false),
    );
    let applied = a
        .unwrap()
        .iter()
        .chain(b.unwrap().iter())
        .filter(|r| r.outcome == Outcome::Applied)
        .count();
    assert_eq!(applied, 1, "t3 was applied by exactly one runner");
    let forward: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM __norn_change__ WHERE name = '2026-01-03-table-3' AND direction = 'change'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        forward, 2,
        "the first apply and one re-apply after the revert"
    );
}

#[tokio::test]
async fn an_expired_lock_is_taken_over_once_its_holder_is_gone_never_while_it_runs() {
    let url = norn_shared::testing::fresh_database().await;
    let dir = folder(1);
    let loaded = changes::disk::load(dir.path()).unwrap();
    let mut slow = PgConnection::connect(&url).await.unwrap();
    track::ensure(&mut slow).await.unwrap();
    track::try_lock(&mut slow, "shop", "slow-runner", Duration::ZERO, "apply")
        .await
        .unwrap()
        .unwrap();
    // Its row has expired, but its connection lives: it may still be running
    // a change, so nobody takes over.
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let err = changes::apply(&mut conn, &loaded, &opts("alive"), false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("slow-runner"), "{err}");
    assert!(tables(&mut conn).await.is_empty());
    // Gone (its connection closed, as when its process dies): taken over.
    slow.close().await.unwrap();
    let runs = changes::apply(&mut conn, &loaded, &opts("alive"), false)
        .await
        .unwrap();
    assert_eq!(runs[0].outcome, Outcome::Applied);
    assert_eq!(tables(&mut conn).await, ["t1"]);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM __norn_lock__")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "released after the run");
}

#[tokio::test]
async fn a_holder_dropped_mid_run_leaves_no_lock_behind_even_before_its_row_expires() {
    let url = norn_shared::testing::fresh_database().await;
    let dir = folder(1);
    let loaded = changes::disk::load(dir.path()).unwrap();
    let mut gone = PgConnection::connect(&url).await.unwrap();
    track::ensure(&mut gone).await.unwrap();
    // As a step deadline leaves it: the runner's future dropped with its
    // connection, the row never deleted, five minutes left on it.
    track::try_lock(&mut gone, "shop", "deploy-9 #3", changes::LOCK_TTL, "apply")
        .await
        .unwrap()
        .unwrap();
    drop(gone);
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let waiting = Options {
        wait: Some(Wait {
            timeout: Duration::from_secs(10),
            poll: Duration::from_millis(50),
        }),
        ..opts("next")
    };
    let runs = changes::apply(&mut conn, &loaded, &waiting, false)
        .await
        .unwrap();
    assert_eq!(runs[0].outcome, Outcome::Applied);
    assert_eq!(tables(&mut conn).await, ["t1"]);
}

#[tokio::test]
async fn a_change_that_sets_its_search_path_or_role_leaves_the_session_as_it_found_it() {
    let url = norn_shared::testing::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "2026-01-01-schema/change/001.sql",
        "CREATE SCHEMA s1; SET search_path = s1; CREATE TABLE t9 (id int);",
    );
    write(
        tmp.path(),
        "2026-01-02-plain/change/001.sql",
        "CREATE TABLE t1 (id int);",
    );
    write(
        tmp.path(),
        "2026-01-03-loose/change/001.sql",
        "-- norn:no-transaction\nSET search_path = s1;",
    );
    write(
        tmp.path(),
        "2026-01-04-after/change/001.sql",
        "CREATE TABLE t2 (id int);",
    );
    let loaded = changes::disk::load(tmp.path()).unwrap();
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let runs = changes::apply(&mut conn, &loaded, &opts("cli"), false)
        .await
        .unwrap();
    assert!(
        runs.iter().all(|r| r.outcome == Outcome::Applied),
        "{runs:?}"
    );
    // Each later change ran in public, and the tracking rows went there too.
    assert_eq!(tables(&mut conn).await, ["t1", "t2"]);
    assert_eq!(rows(&mut conn).await.len(), 4);
    let path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!path.contains("s1"), "{path}");
}

#[tokio::test]
async fn a_rewind_that_fails_gives_the_lock_back() {
    let mut conn = database().await;
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "2026-01-01-no-revert/change/001.sql",
        "CREATE TABLE t1 (id int);",
    );
    let loaded = changes::disk::load(tmp.path()).unwrap();
    changes::apply(&mut conn, &loaded, &opts("a"), false)
        .await
        .unwrap();
    let err = changes::rewind(&mut conn, &loaded, 1, &opts("a"))
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::NoRevert(_)), "{err}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM __norn_lock__")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "the failed rewind released its lock");
}

#[tokio::test]
async fn a_dry_run_lists_the_sql_and_writes_nothing() {
    let mut conn = database().await;
    let dir = folder(2);
    let loaded = changes::disk::load(dir.path()).unwrap();
    let runs = changes::dry_run(&mut conn, &loaded).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].outcome, Outcome::WouldRun);
    assert_eq!(
        runs[0].files[0].sql.as_deref(),
        Some("CREATE TABLE t1 (id int);")
    );
    assert!(tables(&mut conn).await.is_empty());
    assert!(
        !track::exists(&mut conn).await.unwrap(),
        "not even the tracking tables"
    );
}
