//! health-prune-bench: what pruning health checks older than 24 hours costs
//! the inserts that keep arriving meanwhile. Seeds a table of `--rows` checks
//! spread evenly over 48 hours (so half are due), measures insert latency with
//! no prune, then while `db::health::prune` runs exactly as the scheduler
//! leader runs it. `--compare-single-delete` adds the seed's one-statement
//! DELETE on a second, identical table. Prints Markdown; see bench/README.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use norn_bench::harness::{Db, describe_server};
use norn_bench::stats::{Summary, ms, summarize};
use norn_shared::db::health::{self, NewCheck, PRUNE_BATCH};
use sqlx::PgPool;

#[derive(Parser, Debug)]
#[command(about = "Measures health-check pruning against concurrent inserts")]
struct Args {
    #[arg(
        long,
        env = "NORN_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:55433/postgres"
    )]
    database_url: String,
    /// Rows in the table before pruning, spread over 48 hours.
    #[arg(long, default_value_t = 10_000_000)]
    rows: i64,
    /// Distinct apps the rows belong to.
    #[arg(long, default_value_t = 1_000)]
    apps: i64,
    /// Inserts per second, spread over `--inserters` connections.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    #[arg(long, default_value_t = 4)]
    inserters: u64,
    /// Seconds of inserts measured with no prune running.
    #[arg(long, default_value_t = 30)]
    baseline_secs: u64,
    /// Also measure one `DELETE ... WHERE checked_at < now() - 24h` statement.
    #[arg(long)]
    compare_single_delete: bool,
}

enum Prune {
    Batched,
    SingleStatement,
}

struct Outcome {
    deleted: u64,
    took: Duration,
    inserts: Summary,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("# health-prune-bench\n");
    println!("{}", describe_server(&args.database_url).await?);
    println!(
        "\n{} rows over 48 h across {} apps; inserts at {}/s over {} connections; prune batch {PRUNE_BATCH}.\n",
        args.rows, args.apps, args.rate, args.inserters
    );
    println!(
        "| run | deleted | prune time | rows/s | inserts | insert p50 | insert p99 | insert max |"
    );
    println!("|---|---|---|---|---|---|---|---|");

    let db = seeded(&args).await?;
    let baseline = inserts_while(
        &args,
        &db.pool,
        tokio::time::sleep(secs(args.baseline_secs)),
    );
    let (inserts, ()) = baseline.await?;
    row("no prune (baseline)", None, &inserts);
    let batched = measure(&args, &db.pool, Prune::Batched).await;
    db.drop().await?;
    let batched = batched?;
    row("batched prune (Norn)", Some(&batched), &batched.inserts);

    if args.compare_single_delete {
        let db = seeded(&args).await?;
        let single = measure(&args, &db.pool, Prune::SingleStatement).await;
        db.drop().await?;
        let single = single?;
        row(
            "one DELETE statement (seed)",
            Some(&single),
            &single.inserts,
        );
    }
    Ok(())
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn row(label: &str, prune: Option<&Outcome>, inserts: &Summary) {
    let (deleted, took, rate) = match prune {
        Some(o) => (
            o.deleted.to_string(),
            ms(o.took),
            format!("{:.0}", o.deleted as f64 / o.took.as_secs_f64()),
        ),
        None => ("–".into(), "–".into(), "–".into()),
    };
    println!(
        "| {label} | {deleted} | {took} | {rate} | {} | {} | {} | {} |",
        inserts.n,
        ms(inserts.p50),
        ms(inserts.p99),
        ms(inserts.max)
    );
}

/// A fresh database holding `--rows` checks, evenly spaced over the last 48 h,
/// with time-ordered ids shaped like the UUIDv7 the worker writes.
async fn seeded(args: &Args) -> anyhow::Result<Db> {
    let db = Db::fresh(&args.database_url).await?;
    let started = Instant::now();
    const CHUNK: i64 = 1_000_000;
    let mut from = 0;
    while from < args.rows {
        let to = (from + CHUNK).min(args.rows);
        sqlx::query(
            "INSERT INTO health_checks (id, app, healthy, response_ms, status_code, checked_at)
             SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7' || substr(r, 1, 3) || '-8'
                    || substr(r, 4, 3) || '-' || substr(r, 7, 12),
                    'app-' || (g % $3), g % 50 <> 0, (g % 200)::int, 200, t
             FROM generate_series($1, $2 - 1) g,
                  LATERAL (SELECT now() - interval '48 hours' + (g::float8 / $4) * interval '48 hours' AS t) ts,
                  LATERAL (SELECT lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') AS h,
                                  md5(g::text) AS r) ids
             ORDER BY g",
        )
        .bind(from)
        .bind(to)
        .bind(args.apps)
        .bind(args.rows as f64)
        .execute(&db.pool)
        .await
        .context("seeding health_checks")?;
        from = to;
    }
    sqlx::query("VACUUM ANALYZE health_checks")
        .execute(&db.pool)
        .await?;
    db.settle().await?;
    eprintln!(
        "seeded {} rows in {:.1} s",
        args.rows,
        started.elapsed().as_secs_f64()
    );
    Ok(db)
}

/// Runs one prune with inserts going on; checks it deleted exactly the rows
/// that were due and nothing younger.
async fn measure(args: &Args, pool: &PgPool, how: Prune) -> anyhow::Result<Outcome> {
    let (cutoff, young_before): (DateTime<Utc>, i64) = sqlx::query_as(
        "SELECT now() - interval '24 hours',
                (SELECT count(*) FROM health_checks WHERE checked_at >= now() - interval '23 hours')",
    )
    .fetch_one(pool)
    .await?;
    let started = Instant::now();
    let prune = async {
        match how {
            Prune::Batched => health::prune(pool, PRUNE_BATCH).await,
            Prune::SingleStatement => sqlx::query(
                "DELETE FROM health_checks WHERE checked_at < now() - interval '24 hours'",
            )
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        }
    };
    let (inserts, deleted) = inserts_while(args, pool, prune).await?;
    let took = started.elapsed();
    let deleted = deleted?;
    let (old_left, young_after): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM health_checks WHERE checked_at < $1),
                (SELECT count(*) FROM health_checks WHERE checked_at >= $1 + interval '1 hour')",
    )
    .bind(cutoff)
    .fetch_one(pool)
    .await?;
    if old_left != 0 {
        bail!("{old_left} rows older than 24 h left after the prune");
    }
    let expected = young_before + inserts.n as i64;
    if young_after != expected {
        bail!("prune touched young rows: {young_after} left, expected {expected}");
    }
    Ok(Outcome {
        deleted,
        took,
        inserts,
    })
}

/// Inserts health checks at `--rate` until `until` completes; returns the
/// latency of every insert (pool acquire included, as the worker sees it).
async fn inserts_while<T>(
    args: &Args,
    pool: &PgPool,
    until: impl Future<Output = T>,
) -> anyhow::Result<(Summary, T)> {
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_secs_f64(args.inserters as f64 / args.rate as f64);
    let tasks: Vec<_> = (0..args.inserters)
        .map(|i| {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let app = format!("app-{i}");
                let mut took = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let t = Instant::now();
                    let mut conn = pool.acquire().await?;
                    health::insert(&mut conn, &check(&app)).await?;
                    took.push(t.elapsed());
                }
                anyhow::Ok(took)
            })
        })
        .collect();
    let value = until.await;
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((summarize(all), value))
}

fn check(app: &str) -> NewCheck<'_> {
    NewCheck {
        app,
        healthy: true,
        response_ms: Some(3),
        status_code: Some(200),
        error: None,
    }
}
