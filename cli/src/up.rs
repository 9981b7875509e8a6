//! `norn up`: api + worker + scheduler in one process on :8800.

use norn_shared::Config;
use norn_shared::config::Secret;
use tokio::sync::watch;

use crate::localpg::LocalPg;
use norn_shared::kv::LocalServer;

/// Stops the private cluster however `norn up` ends (Ctrl-C, a role failing,
/// an error during start-up).
struct ClusterGuard(LocalPg);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        self.0.stop();
        eprintln!("norn: stopped the private Postgres");
    }
}

/// Stops the private `redis-server` however `norn up` ends.
struct KvGuard(LocalServer);

impl Drop for KvGuard {
    fn drop(&mut self) {
        self.0.stop();
        eprintln!("norn: stopped the private key-value server");
    }
}

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let gateway = app_gateway(&config).await;
    let _cluster = if config.database_url.is_none() {
        let pg = LocalPg::prepare(config.pg_bin_dir(), &config.state_dir, config.local_pg_port)?;
        pg.start(gateway.as_deref())?;
        eprintln!(
            "norn: private Postgres at 127.0.0.1:{} (data in {}){}",
            config.local_pg_port,
            pg.data().display(),
            gateway
                .as_deref()
                .map(|g| format!("; app containers reach their databases at {g}"))
                .unwrap_or_default()
        );
        config.database_url = Some(Secret::new(pg.url()));
        if config.app_database_url.is_none() {
            config.app_database_url = Some(Secret::new(pg.provisioner_url()));
        }
        Some(ClusterGuard(pg))
    } else {
        None
    };
    // One machine, one user: repositories on it may be deployed (set
    // NORN_ALLOW_LOCAL_REPOS=false to refuse them).
    if std::env::var_os("NORN_ALLOW_LOCAL_REPOS").is_none() {
        config.git_policy.allow_local = true;
    }
    if config.secret_key.is_none() {
        config.secret_key = Some(crate::keyfile::load_or_create(&config.state_dir)?);
    }
    let _kv = private_kv(&mut config, gateway.as_deref()).await?;
    let pool = norn_shared::bootstrap::database(&config, 30).await?;
    let (stop_tx, stop) = watch::channel(false);
    let signal = norn_shared::shutdown::on_signal();
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        norn_shared::shutdown::wait(signal).await;
        let _ = on_signal.send(true);
    });
    announce(&config);
    let config_ports = (config.port, config.ingress_port, config.bind_addr);
    let api = {
        let (pool, config, stop, stop_tx) =
            (pool.clone(), config.clone(), stop.clone(), stop_tx.clone());
        tokio::spawn(async move {
            let r = norn_api::run(pool, config, stop).await;
            // Without its API the process is useless: stop the other roles.
            let _ = stop_tx.send(true);
            r
        })
    };
    let scheduler = tokio::spawn(norn_scheduler::run(
        pool.clone(),
        config.clone(),
        stop.clone(),
    ));
    // The worker future is not spawned: apalis' handler types are not
    // `Send` for every lifetime, so it runs on this task.
    let worker = norn_worker::run(pool, config, stop).await;
    if worker.is_err() {
        let _ = stop_tx.send(true);
    }
    let (a, s) = tokio::join!(api, scheduler);
    a?.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "api: port {} or {} on {} is already in use (another norn up?); set NORN_PORT / NORN_INGRESS_PORT",
            config_ports.0,
            config_ports.1,
            config_ports.2
        ),
        _ => anyhow::anyhow!("api: {e}"),
    })?;
    worker?;
    s??;
    Ok(())
}

/// `norn up`'s own `redis-server` for apps declaring `services.kv`, when
/// `NORN_KV_URL` is unset and the binary is installed. Never fatal: without
/// it `norn up` runs on, and such an app's forge fails saying why.
async fn private_kv(config: &mut Config, gateway: Option<&str>) -> anyhow::Result<Option<KvGuard>> {
    if config.kv_url.is_some() {
        return Ok(None);
    }
    let without = |why: String| {
        eprintln!("norn: {why}: apps declaring services.kv cannot be forged");
        Ok(None)
    };
    if !LocalServer::available() {
        return without(
            "no redis-server on this machine and NORN_KV_URL unset (apt-get install redis-server)"
                .into(),
        );
    }
    let port = config.local_kv_port;
    // Another server on the port would answer in our place (with another
    // password): say so instead.
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        return without(format!(
            "port {port} is in use (another norn up?), so no private key-value server; \
             set NORN_LOCAL_KV_PORT"
        ));
    }
    let dir = config.state_dir.join("kv");
    let password = crate::keyfile::password(&dir.join("admin.password"))?;
    let mut binds = vec!["127.0.0.1"];
    binds.extend(gateway);
    let server = match LocalServer::start(&dir, port, &password, &binds, true).await {
        Ok(server) => server,
        Err(e) => return without(format!("the private key-value server did not start: {e}")),
    };
    eprintln!(
        "norn: private key-value server at 127.0.0.1:{port} (data in {}){}",
        dir.display(),
        gateway
            .map(|g| format!("; app containers reach it at {g}"))
            .unwrap_or_default()
    );
    config.kv_url = Some(Secret::new(server.url()));
    Ok(Some(KvGuard(server)))
}

/// The app network's gateway (made if missing): where the private Postgres
/// must listen for app containers. `None` (and a warning) without Docker;
/// the worker then fails with the engine's error.
async fn app_gateway(config: &Config) -> Option<String> {
    let defaults = norn_worker::adapters::docker::Defaults {
        memory_mb: config.container_memory_mb,
        pids: config.container_pids,
    };
    let found = async {
        let docker = norn_worker::adapters::docker::DockerEngine::connect(
            &config.docker_network,
            None,
            defaults,
        )
        .await?;
        docker.gateway().await
    };
    match found.await {
        Ok(gateway) => Some(gateway),
        Err(e) => {
            eprintln!(
                "norn: could not reach the Docker engine ({e}); app containers will not reach their databases"
            );
            None
        }
    }
}

fn announce(config: &Config) {
    let host = config.bind_addr;
    eprintln!("norn: api on http://{host}:{}", config.port);
    if config.ingress_port != 0 {
        eprintln!(
            "norn: app traffic on http://{host}:{} — a deployed app answers at \
             http://<app>.localhost:{} (or: curl -H 'Host: <app>.localhost' http://{host}:{}/)",
            config.ingress_port, config.ingress_port, config.ingress_port
        );
    }
    eprintln!(
        "norn: apps in {} are registered at start; Ctrl-C stops everything",
        config.apps_dir.display()
    );
}
