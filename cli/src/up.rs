//! `norn up`: api + worker + scheduler in one process on :8800.

use norn_shared::Config;
use norn_shared::config::Secret;

use crate::localpg::LocalPg;

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let local = if config.database_url.is_none() {
        let pg = LocalPg::new(config.pg_bin_dir(), std::path::Path::new(".norn"), 55499)?;
        pg.start()?;
        eprintln!(
            "norn: started a private Postgres at {} (data in .norn/pg)",
            pg.url()
        );
        config.database_url = Some(Secret::new(pg.url()));
        Some(pg)
    } else {
        None
    };
    let pool = norn_shared::bootstrap::database(&config, 30).await?;
    let shutdown = norn_shared::shutdown::on_signal();
    eprintln!("norn: api on http://{}:{}", config.bind_addr, config.port);
    let api = tokio::spawn(norn_api::run(
        pool.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    // The worker future is not spawned: apalis' handler types are not
    // `Send` for every lifetime, so it runs on this task.
    let worker = norn_worker::run(pool.clone(), config.clone(), shutdown.clone());
    let scheduler = tokio::spawn(norn_scheduler::run(pool, config, shutdown));
    let (a, w, s) = tokio::join!(api, worker, scheduler);
    if let Some(pg) = local {
        pg.stop();
    }
    a??;
    w?;
    s??;
    Ok(())
}
