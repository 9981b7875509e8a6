use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = norn_shared::Config::from_env()?;
    let pool = norn_shared::db::connect(config.require_database_url()?, 5)
        .await
        .context("connecting to Postgres")?;
    norn_shared::db::migrate(&pool).await?;
    norn_scheduler::run(pool, config, norn_shared::shutdown::on_signal()).await?;
    Ok(())
}
