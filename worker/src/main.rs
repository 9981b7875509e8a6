#[tokio::main]
async fn main() -> anyhow::Result<()> {
    norn_shared::bootstrap::init_logging();
    let config = norn_shared::Config::from_env()?;
    let pool = norn_shared::bootstrap::database(&config, 20).await?;
    norn_worker::run(pool, config, norn_shared::shutdown::on_signal()).await?;
    Ok(())
}
