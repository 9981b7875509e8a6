//! Real Norn binaries as child processes (built by `cargo build --workspace --bins`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn bin(name: &str) -> PathBuf {
    let norn = PathBuf::from(env!("CARGO_BIN_EXE_norn"));
    let path = norn.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(name: &str, db: &str, tmp: &std::path::Path, node: &str, port: u16) -> Proc {
    spawn_with(name, db, tmp, node, port, &[])
}

/// [`spawn`] with extra environment variables (set last, so they win).
pub fn spawn_with(
    name: &str,
    db: &str,
    tmp: &std::path::Path,
    node: &str,
    port: u16,
    env: &[(&str, &str)],
) -> Proc {
    let child = Command::new(bin(name))
        .env("DATABASE_URL", db)
        .env(
            "NORN_APP_DATABASE_URL",
            norn_shared::testing::provisioner_url(),
        )
        .env("NORN_SECRET_KEY", norn_shared::testing::TEST_SECRET_KEY)
        .env("NORN_ALLOW_LOCAL_REPOS", "true")
        .env("NORN_PORT", port.to_string())
        .env("NORN_INGRESS_PORT", "0")
        .env("NORN_APPS_DIR", tmp.join("apps"))
        .env("NORN_WORK_DIR", tmp.join(format!("work-{node}")))
        .env("NORN_SNAPSHOTS_DIR", tmp.join("snapshots"))
        .env("NORN_DOCKER_NETWORK", "norn-test")
        .env("NORN_NODE_NAME", node)
        .env("NORN_HEALTHY_TIMEOUT", "60s")
        .env("NORN_DRAIN_GRACE", "200ms")
        // NORN_TEST_PROC_LOG raises the spawned processes' log level when
        // chasing a failure (their stderr is the test's).
        .env(
            "RUST_LOG",
            std::env::var("NORN_TEST_PROC_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().copied())
        .stdout(if std::env::var_os("NORN_TEST_PROC_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    Proc(child)
}

/// A Postgres cluster of this test's own (tests that restart Postgres must
/// not disturb the shared one), with a database `norn`. Returns its URL and
/// data directory (for [`pg_ctl`]).
pub async fn private_cluster() -> (String, String) {
    let port = free_port();
    let data = format!("/tmp/norn-restart-{}", uuid::Uuid::new_v4().simple());
    norn_shared::testing::track(norn_shared::testing::Leftover::Cluster(data.clone()));
    let status = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/pg.sh"))
        .env("PGPORT", port.to_string())
        .env("PGDATA", &data)
        .status()
        .unwrap();
    assert!(status.success());
    let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE norn")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    (format!("postgres://postgres@127.0.0.1:{port}/norn"), data)
}

pub fn pg_ctl(data: &str, args: &[&str]) {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("bin"))
        .max()
        .unwrap();
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("pg_ctl"))
        .args(["-D", data])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl {args:?} failed");
}

/// Waits until `api` answers its health route.
pub async fn wait_api(http: &reqwest::Client, api: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while http.get(format!("{api}/api/health")).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{api} never came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The handful of API calls the multi-process tests make.
pub struct ProcApi {
    pub base: String,
    pub http: reqwest::Client,
}

impl ProcApi {
    /// Waits until the API at `base` answers.
    pub async fn new(base: &str) -> Self {
        let http = reqwest::Client::new();
        wait_api(&http, base).await;
        ProcApi {
            base: base.to_owned(),
            http,
        }
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await;
        resp.unwrap().json().await.unwrap_or_default()
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or_default(),
        )
    }

    pub async fn deployment(&self, id: &str) -> serde_json::Value {
        self.get(&format!("/api/deployments/{id}")).await
    }

    pub async fn wait_terminal(&self, id: &str, limit: Duration) -> serde_json::Value {
        super::eventually(limit, "deployment to finish", || async {
            let d = self.deployment(id).await;
            matches!(d["status"].as_str(), Some("deployed" | "failed")).then_some(d)
        })
        .await
    }
}
