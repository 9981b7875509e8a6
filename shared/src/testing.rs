//! Test support: a fresh, migrated database per test on a real Postgres.
//! `NORN_TEST_DATABASE_URL` points at a server where the test user may create
//! databases (`.ci/run` starts one).
//!
//! Hygiene: what a test binary creates (databases, the containers and images
//! of the apps it names, private clusters) is recorded here and removed when
//! the binary exits, whether its tests passed or not.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use sqlx::{Connection, PgConnection, PgPool};

fn admin_url() -> String {
    std::env::var("NORN_TEST_DATABASE_URL")
        .expect("NORN_TEST_DATABASE_URL must point at a Postgres server (bash .ci/run starts one)")
}

pub use crate::db::with_database;

fn template_name() -> String {
    let mut h = DefaultHasher::new();
    for m in sqlx::migrate!("../migrations").iter() {
        m.checksum.hash(&mut h);
    }
    format!("norn_template_{:x}", h.finish())
}

/// Creates a database from a migrated template and returns its URL.
pub async fn fresh_database() -> String {
    let admin = admin_url();
    let template = template_name();
    let mut conn = PgConnection::connect(&admin)
        .await
        .expect("connect to test server");
    sqlx::query("SELECT pg_advisory_lock(7316)")
        .execute(&mut conn)
        .await
        .expect("lock");
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&template)
        .fetch_optional(&mut conn)
        .await
        .expect("query templates");
    if exists.is_none() {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {template}")))
            .execute(&mut conn)
            .await
            .expect("create template");
        let pool = PgPool::connect(&with_database(&admin, &template))
            .await
            .expect("connect template");
        crate::db::migrate(&pool).await.expect("migrate template");
        pool.close().await;
    }
    let provisioner: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(PROVISIONER)
        .fetch_optional(&mut conn)
        .await
        .expect("query roles");
    if provisioner.is_none() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {PROVISIONER} LOGIN CREATEDB CREATEROLE"
        )))
        .execute(&mut conn)
        .await
        .expect("create the provisioning role");
    }
    let name = format!("norn_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {template}"
    )))
    .execute(&mut conn)
    .await
    .expect("create test database");
    track(Leftover::Database(name.clone()));
    sqlx::query("SELECT pg_advisory_unlock(7316)")
        .execute(&mut conn)
        .await
        .expect("unlock");
    with_database(&admin, &name)
}

/// The secret key tests seal service passwords with (never a real one).
pub const TEST_SECRET_KEY: &str =
    "6e6f726e2d746573742d6b65792d6e6f742d666f722d70726f64756374696f6e";

/// The admin URL of a `redis-server` of this test binary's own (started on
/// first use, on every address so app containers reach it at their
/// gateway, password-protected; stopped and deleted at exit).
pub async fn kv_url() -> String {
    static URL: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    URL.get_or_init(|| async {
        let dir =
            std::env::temp_dir().join(format!("norn-test-kv-{}", uuid::Uuid::new_v4().simple()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = crate::kv::LocalServer::start(
            &dir,
            port,
            &crate::crypto::random_password(),
            &["0.0.0.0"],
            false,
        )
        .await
        .expect("redis-server must be installed (apt-get install redis-server)");
        let url = server.url();
        track(Leftover::KvServer(Box::new(server), dir));
        url
    })
    .await
    .clone()
}

/// The bootstrap address of a Kafka-protocol broker of this test binary's
/// own ([`crate::brokers::LocalBroker`], started on first use, stopped at
/// exit). It advertises Docker's default bridge address, which this host
/// and app containers on any Docker network both reach.
pub async fn events_brokers() -> String {
    static BROKERS: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    BROKERS
        .get_or_init(|| async {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let broker = crate::brokers::LocalBroker::start(port, &docker_bridge_address())
                .await
                .expect(
                    "a Kafka-protocol broker must be runnable: set NORN_TEST_TANSU or put tansu \
                     on the PATH (.ci/run fetches it)",
                );
            let bootstrap = broker.bootstrap();
            track(Leftover::Broker(Box::new(broker)));
            bootstrap
        })
        .await
        .clone()
}

/// The IPv4 address of Docker's `docker0` bridge on this host.
fn docker_bridge_address() -> String {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "docker0"])
        .output()
        .expect("ip (iproute2) must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .expect("docker0 has an IPv4 address")
}

/// A URL on the test server as Norn's provisioning role: CREATEDB and
/// CREATEROLE, not a superuser (what `NORN_APP_DATABASE_URL` must be).
/// [`fresh_database`] makes the role.
pub fn provisioner_url() -> String {
    let url: sqlx::postgres::PgConnectOptions = admin_url().parse().expect("test server URL");
    format!(
        "postgres://{PROVISIONER}@{}:{}/postgres",
        url.get_host(),
        url.get_port()
    )
}

const PROVISIONER: &str = "norn_provisioner";

/// A pool on a fresh database.
pub async fn fresh_pool() -> (PgPool, String) {
    let url = fresh_database().await;
    let pool = crate::db::connect(&url, 10).await.expect("connect test db");
    (pool, url)
}

/// Something a test made that must not outlive its test binary.
pub enum Leftover {
    /// A database on the `NORN_TEST_DATABASE_URL` server.
    Database(String),
    /// An app name: its containers (label `norn.app`) and images (`<app>:*`).
    App(String),
    /// A private Postgres cluster's data directory: stopped, then deleted.
    Cluster(String),
    /// A `redis-server` and its directory: stopped, then deleted.
    KvServer(Box<crate::kv::LocalServer>, std::path::PathBuf),
    /// A Kafka-protocol broker: stopped.
    Broker(Box<crate::brokers::LocalBroker>),
}

static LEFTOVERS: std::sync::Mutex<Vec<Leftover>> = std::sync::Mutex::new(Vec::new());

/// Records `item` for removal when this test binary exits.
pub fn track(item: Leftover) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        // SAFETY: `remove_leftovers` is a plain `extern "C" fn()` that never
        // unwinds (it catches panics).
        unsafe {
            libc::atexit(remove_leftovers);
        }
    });
    if let Ok(mut all) = LEFTOVERS.lock() {
        all.push(item);
    }
}

extern "C" fn remove_leftovers() {
    let _ = std::panic::catch_unwind(|| {
        let mut items = match LEFTOVERS.lock() {
            Ok(mut all) => std::mem::take(&mut *all),
            Err(_) => return,
        };
        for item in &mut items {
            match item {
                Leftover::KvServer(server, dir) => {
                    server.stop();
                    let _ = std::fs::remove_dir_all(dir);
                }
                Leftover::Broker(broker) => broker.stop(),
                _ => {}
            }
        }

        let apps: std::collections::HashSet<&str> = items
            .iter()
            .filter_map(|i| match i {
                Leftover::App(a) => Some(a.as_str()),
                _ => None,
            })
            .collect();
        if !apps.is_empty() {
            remove_app_leftovers(&apps);
            // A worker thread of this process may have had a container
            // create in flight: it lands after the first pass.
            std::thread::sleep(std::time::Duration::from_secs(1));
            remove_app_leftovers(&apps);
        }
        for item in &items {
            if let Leftover::Cluster(data) = item {
                stop_cluster(data);
            }
        }
        let mut dbs: Vec<String> = items
            .iter()
            .filter_map(|i| match i {
                Leftover::Database(d) => Some(d.clone()),
                _ => None,
            })
            .collect();
        // The database a test app declares is named after the app (and so is
        // the role the forge made for it).
        let app_dbs: Vec<String> = apps.iter().map(|a| a.replace('-', "_")).collect();
        dbs.extend(app_dbs.iter().cloned());
        if let (false, Ok(admin)) = (dbs.is_empty(), std::env::var("NORN_TEST_DATABASE_URL")) {
            let mut psql = std::process::Command::new("psql");
            psql.arg(&admin).args(["-q", "-v", "ON_ERROR_STOP=0"]);
            for db in dbs {
                psql.args(["-c", &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")]);
            }
            // Tests that name several apps after one tracked prefix
            // (`<prefix>-<n>`) leave `<prefix>_<n>` databases and roles.
            for db in prefixed(&admin, "pg_database", "datname", &app_dbs) {
                psql.args(["-c", &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")]);
            }
            for role in app_dbs
                .iter()
                .cloned()
                .chain(prefixed(&admin, "pg_roles", "rolname", &app_dbs))
            {
                psql.args(["-c", &format!("DROP ROLE IF EXISTS {role}")]);
            }
            let _ = psql
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    });
}

/// Names in `catalog.column` that start with one of `prefixes` and `_`.
fn prefixed(admin: &str, catalog: &str, column: &str, prefixes: &[String]) -> Vec<String> {
    if prefixes.is_empty() {
        return Vec::new();
    }
    let patterns: Vec<String> = prefixes.iter().map(|p| format!("'{p}\\_%'")).collect();
    let query = format!(
        "SELECT {column} FROM {catalog} WHERE {column} LIKE ANY (ARRAY[{}])",
        patterns.join(",")
    );
    std::process::Command::new("psql")
        .arg(admin)
        .args(["-At", "-c", &query])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn remove_app_leftovers(apps: &std::collections::HashSet<&str>) {
    let containers: Vec<String> = docker_lines(&[
        "ps",
        "-a",
        "--filter",
        "label=norn.app",
        "--format",
        "{{.ID}} {{.Label \"norn.app\"}}",
    ])
    .into_iter()
    .filter_map(|l| {
        let (id, app) = l.split_once(' ')?;
        apps.contains(app).then(|| id.to_owned())
    })
    .collect();
    if !containers.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&containers)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let images: Vec<String> = docker_lines(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .into_iter()
        .filter(|r| {
            r.split_once(':')
                .is_some_and(|(repo, _)| apps.contains(repo))
        })
        .collect();
    if !images.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f"])
            .args(&images)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn stop_cluster(data: &str) {
    let Some(bin) = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path().join("bin")).max())
    else {
        return;
    };
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let mut cmd = if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join("pg_ctl"));
        c
    } else {
        std::process::Command::new(bin.join("pg_ctl"))
    };
    let _ = cmd
        .args(["-D", data, "-m", "immediate", "-w", "stop"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(data);
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_database() {
        use super::with_database;
        assert_eq!(
            with_database("postgres://u@h:5/db?sslmode=disable", "x"),
            "postgres://u@h:5/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
    }
}
