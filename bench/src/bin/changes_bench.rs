//! changes-bench: Norn's change runner on `--changes` small changes (one
//! table and one index each) on a fresh database: loading the folder,
//! planning (status), applying them all, and running them again (all
//! skipped, `already-run`); beside it, the same SQL run bare (one
//! statement batch per change, no tracking, no transaction of its own) on
//! another fresh database. Prints Markdown; see bench/README.md.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use norn_bench::harness::{Db, describe_server};
use norn_shared::changes::{self, Options, Outcome};
use sqlx::Connection;

#[derive(Parser, Debug)]
#[command(about = "Measures the change runner: plan, apply and re-run N changes")]
struct Args {
    #[arg(
        long,
        env = "NORN_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:55433/postgres"
    )]
    database_url: String,
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Runs of each measurement; the table shows the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn sql(i: usize) -> String {
    format!("CREATE TABLE t{i} (id bigint PRIMARY KEY, v text);\nCREATE INDEX t{i}_v ON t{i} (v);")
}

fn write_folder(root: &Path, n: usize) -> anyhow::Result<()> {
    for i in 1..=n {
        let dir = root.join(format!("2026-01-01-change-{i:05}"));
        std::fs::create_dir_all(dir.join("change"))?;
        std::fs::create_dir_all(dir.join("revert"))?;
        std::fs::write(dir.join("change/001.sql"), sql(i))?;
        std::fs::write(dir.join("revert/001.sql"), format!("DROP TABLE t{i};"))?;
    }
    Ok(())
}

struct Times {
    load: Duration,
    plan: Duration,
    apply: Duration,
    rerun: Duration,
    bare: Duration,
}

async fn once(args: &Args, folder: &Path) -> anyhow::Result<Times> {
    let t = Instant::now();
    let loaded = changes::disk::load(folder)?;
    let load = t.elapsed();
    let db = Db::fresh(&args.database_url).await?;
    let mut conn = sqlx::PgConnection::connect(&db.url()).await?;
    let opts = Options {
        holder: "changes-bench".into(),
        app: "bench".into(),
        scope: "bench".into(),
        lock_ttl: changes::LOCK_TTL,
        wait: None,
    };
    let t = Instant::now();
    changes::status(&mut conn, &loaded).await?;
    let plan = t.elapsed();
    let t = Instant::now();
    let runs = changes::apply(&mut conn, &loaded, &opts, false).await?;
    let apply = t.elapsed();
    anyhow::ensure!(
        runs.iter().all(|r| r.outcome == Outcome::Applied),
        "not all applied"
    );
    let t = Instant::now();
    let again = changes::apply(&mut conn, &loaded, &opts, false).await?;
    let rerun = t.elapsed();
    anyhow::ensure!(
        again.iter().all(|r| r.outcome == Outcome::Skipped),
        "not all skipped"
    );
    conn.close().await?;
    db.drop().await?;

    let bare_db = Db::fresh(&args.database_url).await?;
    let mut conn = sqlx::PgConnection::connect(&bare_db.url()).await?;
    let t = Instant::now();
    for i in 1..=args.changes {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql(i)))
            .execute(&mut conn)
            .await?;
    }
    let bare = t.elapsed();
    conn.close().await?;
    bare_db.drop().await?;
    Ok(Times {
        load,
        plan,
        apply,
        rerun,
        bare,
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    write_folder(tmp.path(), args.changes)?;
    let mut all = Vec::new();
    for _ in 0..args.runs.max(1) {
        all.push(once(&args, tmp.path()).await?);
    }
    let pick = |f: fn(&Times) -> Duration| median(all.iter().map(f).collect());
    let (load, plan, apply, rerun, bare) = (
        pick(|t| t.load),
        pick(|t| t.plan),
        pick(|t| t.apply),
        pick(|t| t.rerun),
        pick(|t| t.bare),
    );
    println!("{}", describe_server(&args.database_url).await?);
    println!();
    println!(
        "{} changes (a table and an index each), median of {} runs",
        args.changes,
        all.len()
    );
    println!();
    println!("| step | change runner | bare SQL, no tracking | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| load the folder (read, checksum) | {} | - | - |",
        ms(load)
    );
    println!("| plan (status of every change) | {} | - | - |", ms(plan));
    println!(
        "| apply all | {} | {} | {:.2} |",
        ms(apply),
        ms(bare),
        apply.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "| run again (all `already-run`) | {} | - | {:.3} of apply |",
        ms(rerun),
        rerun.as_secs_f64() / apply.as_secs_f64()
    );
    Ok(())
}
