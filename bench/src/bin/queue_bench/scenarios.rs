//! The measured scenarios. Each runs in its own database.

use std::time::{Duration, Instant};

use anyhow::bail;
use sqlx::PgPool;

use crate::Args;
use norn_bench::harness::{Counter, Db, Mode, describe_server, prefill, push_one, with_worker};
use norn_bench::stats::{ms, summarize};

const DEADLINE: Duration = Duration::from_secs(900);

pub async fn run_all(args: &Args) -> anyhow::Result<()> {
    println!("# queue-bench\n");
    println!("{}", describe_server(&args.database_url).await?);

    println!(
        "\n## Idle pickup (worker idle 2 s, then jobs pushed at 50/s; push → handler start)\n"
    );
    println!("| config | concurrency | jobs | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    latency(args, Mode::Norn { batch: 1 }, 8, args.latency_jobs).await?;
    if !args.quick {
        latency(args, Mode::ApalisDefault, 8, args.default_latency_jobs).await?;
    }

    println!(
        "\n## No-op drain ({} prefilled jobs, until every row is Done)\n",
        args.jobs
    );
    println!("| config | concurrency | finished rows in table | seconds | jobs/s |");
    println!("|---|---|---|---|---|");
    for mode in [
        Mode::ApalisDefault,
        Mode::Norn { batch: 10 },
        Mode::Norn { batch: 32 },
    ] {
        for concurrency in [8, 32] {
            drain(args, mode, concurrency, 0, false).await?;
        }
    }
    drain(args, Mode::ApalisDefault, 8, args.history, false).await?;
    drain(args, Mode::Norn { batch: 10 }, 8, args.history, true).await?;

    if !args.quick {
        println!(
            "\n## Orphan recovery (worker holding a job killed with its runtime; replacement under a fresh name)\n"
        );
        println!("| config | kill → job running again |");
        println!("|---|---|");
        let took = crate::scenarios::orphan(args).await?;
        println!("| Norn (heartbeat 2 s × 5) | {} |", ms(took));
    }
    Ok(())
}

async fn latency(args: &Args, mode: Mode, concurrency: usize, jobs: u64) -> anyhow::Result<()> {
    let db = Db::fresh(&args.database_url).await?;
    db.settle().await?;
    let counter = Counter::new(jobs, false);
    // Pushes come from a separate pool, as an API replica's would.
    let producer = PgPool::connect(&db.url()).await?;
    let result = with_worker(mode, &db.pool, concurrency, counter.clone(), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..jobs {
            tick.tick().await;
            push_one(&producer).await?;
        }
        tokio::time::timeout(Duration::from_secs(120), counter.wait()).await?;
        anyhow::Ok(())
    })
    .await;
    producer.close().await;
    db.drop().await?;
    result??;
    let s = summarize(counter.waits());
    println!(
        "| {} | {concurrency} | {} | {} | {} | {} |",
        mode.label(),
        s.n,
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    );
    Ok(())
}

async fn drain(
    args: &Args,
    mode: Mode,
    concurrency: usize,
    history: u64,
    prune_first: bool,
) -> anyhow::Result<()> {
    let db = Db::fresh(&args.database_url).await?;
    if history > 0 {
        prefill(&db.pool, history).await?;
        sqlx::query("UPDATE apalis.jobs SET status = 'Done', done_at = now() - interval '2 days'")
            .execute(&db.pool)
            .await?;
    }
    let mut note = history.to_string();
    if prune_first {
        let started = Instant::now();
        let pruned = norn_shared::queue::prune(&db.pool, Duration::from_secs(86_400)).await?;
        note = format!(
            "{history}, pruned first ({pruned} rows in {})",
            ms(started.elapsed())
        );
    }
    prefill(&db.pool, args.jobs).await?;
    db.settle().await?;
    let counter = Counter::new(args.jobs, false);
    let started = Instant::now();
    let result = with_worker(mode, &db.pool, concurrency, counter.clone(), async {
        tokio::time::timeout(DEADLINE, async {
            counter.wait().await;
            while db.unfinished().await? > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(())
        })
        .await?
    })
    .await;
    let took = started.elapsed();
    db.drop().await?;
    result??;
    println!(
        "| {} | {concurrency} | {note} | {:.2} | {:.0} |",
        mode.label(),
        took.as_secs_f64(),
        args.jobs as f64 / took.as_secs_f64()
    );
    Ok(())
}

/// A worker claims a job whose handler never returns; then its runtime (its
/// tasks and connections) is torn down without any shutdown, as SIGKILL would.
/// A replacement starts at once under a fresh name, as Norn's supervisor does.
pub async fn orphan(args: &Args) -> anyhow::Result<Duration> {
    let db = Db::fresh(&args.database_url).await?;
    let url = db.url();
    let (claimed_tx, claimed_rx) = tokio::sync::oneshot::channel::<()>();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let victim = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        rt.block_on(async {
            let pool = PgPool::connect(&url).await?;
            let counter = Counter::new(1, true);
            let watch = counter.clone();
            let _ = with_worker(Mode::Norn { batch: 1 }, &pool, 1, counter, async move {
                watch.wait().await;
                let _ = claimed_tx.send(());
                let _ = tokio::task::spawn_blocking(move || kill_rx.recv()).await;
            })
            .await;
            anyhow::Ok(())
        })?;
        rt.shutdown_background();
        Ok(())
    });
    push_one(&db.pool).await?;
    tokio::time::timeout(Duration::from_secs(30), claimed_rx).await??;
    let _ = kill_tx.send(());
    let killed = Instant::now();
    match victim.join() {
        Ok(r) => r?,
        Err(_) => bail!("victim worker thread panicked"),
    }
    let counter = Counter::new(1, false);
    let result = with_worker(
        Mode::Norn { batch: 1 },
        &db.pool,
        1,
        counter.clone(),
        async { tokio::time::timeout(Duration::from_secs(120), counter.wait()).await },
    )
    .await;
    let took = killed.elapsed();
    db.drop().await?;
    result??;
    Ok(took)
}
