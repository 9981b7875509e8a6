//! Test harness: a fresh database, an in-process api + worker, a real Docker
//! engine and real git repositories in temp dirs.

#![allow(dead_code)]

pub mod procs;
pub mod rss;
pub mod witness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use norn_shared::Config;
use serde_json::{Value, json};
use tokio::sync::watch;

pub struct Harness {
    pub db_url: String,
    pub api: String,
    pub ingress: std::net::SocketAddr,
    pub http: reqwest::Client,
    pub tmp: tempfile::TempDir,
    pub pool: sqlx::PgPool,
    pub config: Config,
    stop: watch::Sender<bool>,
}

pub fn test_config(db_url: &str, tmp: &Path) -> Config {
    let mut config = Config::from_env().expect("config");
    config.database_url = Some(norn_shared::config::Secret::new(db_url));
    config.app_database_url = Some(norn_shared::config::Secret::new(
        norn_shared::testing::provisioner_url(),
    ));
    config.secret_key = Some(
        norn_shared::crypto::SecretKey::parse(norn_shared::testing::TEST_SECRET_KEY)
            .expect("test key"),
    );
    config.apps_dir = tmp.join("apps");
    config.work_dir = tmp.join("work");
    config.snapshots_dir = tmp.join("snapshots");
    config.step_timeouts.healthy = Duration::from_secs(30);
    config.drain_grace = Duration::from_millis(500);
    config.docker_network = "norn-test".into();
    // Test repositories are directories on this machine.
    config.git_policy.allow_local = true;
    config.api_token = None;
    config
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// [`Harness::start`] with the configuration changed by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let db_url = norn_shared::testing::fresh_database().await;
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(&db_url, tmp.path());
        config.kv_url = Some(norn_shared::config::Secret::new(
            norn_shared::testing::kv_url().await,
        ));
        config.events_brokers = Some(vec![norn_shared::testing::events_brokers().await]);
        adjust(&mut config);
        let pool = norn_shared::db::connect(&db_url, 20).await.expect("pool");
        let (stop, rx) = watch::channel(false);
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ingress_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", api_listener.local_addr().unwrap());
        let ingress = ingress_listener.local_addr().unwrap();
        let harness_pool = pool.clone();
        let harness_config = config.clone();
        tokio::spawn(norn_api::serve(
            pool.clone(),
            config.clone(),
            Some(api_listener),
            Some(ingress_listener),
            rx.clone(),
        ));
        // apalis' worker future cannot be `tokio::spawn`ed (see cli/src/up.rs);
        // it gets a runtime of its own on a thread.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let _ = rt.block_on(norn_worker::run(pool, config, rx));
        });
        Self {
            db_url,
            api,
            ingress,
            http: reqwest::Client::new(),
            tmp,
            pool: harness_pool,
            config: harness_config,
            stop,
        }
    }

    /// Runs a scheduler in this process too (it leads: it is the only one).
    pub fn spawn_scheduler(&self) {
        tokio::spawn(norn_scheduler::run(
            self.pool.clone(),
            self.config.clone(),
            self.stop.subscribe(),
        ));
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .put(format!("{}{path}", self.api))
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    /// Registers `spec` and deploys HEAD; panics unless it ends `deployed`.
    pub async fn register_and_deploy(&self, spec: Value) {
        let app = spec["name"].as_str().unwrap().to_owned();
        let (status, body) = self.post("/api/apps", spec).await;
        assert!(status == 201 || status == 200, "register: {status} {body}");
        let id = self.deploy(&app, "HEAD").await;
        let done = self.wait_terminal(&id).await;
        assert_eq!(done["status"], "deployed", "{done}");
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.api))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn deploy(&self, app: &str, git_ref: &str) -> String {
        let (status, body) = self
            .post(&format!("/api/apps/{app}/deploy"), json!({"ref": git_ref}))
            .await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Registers `app` from a fresh repository and deploys its first commit,
    /// which serves `v1`.
    pub async fn app_serving_v1(&self, prefix: &str) -> (String, AppRepo) {
        let app = unique_app(prefix);
        let repo = AppRepo::create(self.tmp.path(), &app);
        assert_eq!(self.post("/api/apps", spec(&app, &repo, None)).await.0, 201);
        let first = self.deploy(&app, "HEAD").await;
        assert_eq!(self.wait_terminal(&first).await["status"], "deployed");
        (app, repo)
    }

    /// Polls until the deployment is terminal (deadline 3 min).
    pub async fn wait_terminal(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let (_, d) = self.get(&format!("/api/deployments/{id}")).await;
            if matches!(
                d["status"].as_str(),
                Some("deployed" | "failed" | "rolled_back")
            ) {
                return d;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "deployment {id} never finished: {d}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET `/` of `app` through the ingress.
    pub async fn fetch(&self, app: &str) -> Result<String, String> {
        app_get(&self.http, self.ingress, app).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub async fn app_get(
    http: &reqwest::Client,
    ingress: std::net::SocketAddr,
    app: &str,
) -> Result<String, String> {
    ingress_get(http, ingress, app, "/").await
}

/// GET `path` of `app` through the ingress: the body of a 2xx, else the error.
pub async fn ingress_get(
    http: &reqwest::Client,
    ingress: std::net::SocketAddr,
    app: &str,
    path: &str,
) -> Result<String, String> {
    let resp = http
        .get(format!("http://{ingress}{path}"))
        .header("host", format!("{app}.localhost"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(text)
    } else {
        Err(format!("{status}: {text}"))
    }
}

/// A fresh app name; its containers and images are removed when the test
/// binary exits.
pub fn unique_app(prefix: &str) -> String {
    let app = format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    norn_shared::testing::track(norn_shared::testing::Leftover::App(app.clone()));
    app
}

/// A git repository whose image is a static busybox serving `www/` on :8080.
pub struct AppRepo {
    pub dir: PathBuf,
}

impl AppRepo {
    pub fn create(root: &Path, name: &str) -> Self {
        Self::create_with(root, name, &[])
    }

    /// [`AppRepo::create`] with a working `psql` in the image (the host's,
    /// with the shared libraries it loads), so tests can try connections
    /// from inside the app's own containers.
    pub fn create_with_psql(root: &Path, name: &str) -> Self {
        Self::create_with(root, name, &[psql_binary()])
    }

    /// An app image holding the host's `redis-cli` (and its libraries).
    pub fn create_with_redis_cli(root: &Path, name: &str) -> Self {
        Self::create_with(root, name, &[PathBuf::from("/usr/bin/redis-cli")])
    }

    fn create_with(root: &Path, name: &str, tools: &[PathBuf]) -> Self {
        let dir = root.join(format!("repo-{name}"));
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::copy("/bin/busybox", dir.join("busybox"))
            .expect("busybox-static must be installed (/bin/busybox)");
        let mut dockerfile = String::from(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nCOPY www /www\n",
        );
        for tool in tools {
            copy_with_libraries(tool, &dir.join("rootfs"));
        }
        if !tools.is_empty() {
            std::fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
            std::fs::write(dir.join("rootfs/etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
            dockerfile.push_str("COPY rootfs /\n");
        }
        dockerfile.push_str(
            "CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
        );
        std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        std::fs::write(dir.join("www/health"), "ok\n").unwrap();
        git2::Repository::init(&dir).unwrap();
        let repo = Self { dir };
        repo.commit("v1");
        repo
    }

    /// Writes `version` to `www/index.html` and commits; returns the SHA.
    pub fn commit(&self, version: &str) -> String {
        std::fs::write(self.dir.join("www/index.html"), version).unwrap();
        let repo = git2::Repository::open(&self.dir).unwrap();
        let mut index = repo.index().unwrap();
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("norn test", "test@norn.invalid").unwrap();
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let oid = repo
            .commit(Some("HEAD"), &sig, &sig, version, &tree, &parents)
            .unwrap();
        oid.to_string()
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// The host's `psql` (the real binary; Debian's `/usr/bin/psql` is a wrapper).
pub fn psql_binary() -> PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed")
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .filter(|p| p.exists())
        .max()
        .expect("psql")
}

/// Copies `binary` to `<root>/usr/bin/` and every library `ldd` says it
/// loads (with the loader) to the same path under `root`.
pub fn copy_with_libraries(binary: &Path, root: &Path) {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .expect("ldd");
    let mut files: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    files.push(PathBuf::from("/lib64/ld-linux-x86-64.so.2"));
    for file in files {
        let dest = root.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&file, &dest).unwrap();
    }
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::copy(
        binary,
        root.join("usr/bin").join(binary.file_name().unwrap()),
    )
    .unwrap();
}

/// The host's address as app containers can reach it (the default bridge's
/// gateway): app containers never share the host's network, so a witness on
/// the host listens on every address and is reached here.
pub fn host_from_containers() -> String {
    let out = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}} {{.Subnet}}{{end}}",
        ])
        .output()
        .expect("docker network inspect bridge");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Docker 20.10 may leave the default bridge's gateway out of its IPAM
    // config: it is then the subnet's first address (docker0).
    match text.split_whitespace().collect::<Vec<_>>().as_slice() {
        [subnet] | ["", subnet] => {
            let net = subnet.split('/').next().unwrap();
            let mut octets: Vec<u8> = net.split('.').map(|o| o.parse().unwrap()).collect();
            octets[3] += 1;
            octets
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(".")
        }
        [gateway, _subnet] => gateway.to_string(),
        _ => panic!("the default bridge has no address: {text:?}"),
    }
}

/// Runs `script` with `sh -c` inside the running container `name`: its
/// exit code and combined output.
/// Async, so servers the test runs on its own runtime keep answering.
pub async fn exec_in(name: &str, script: &str) -> (i32, String) {
    let out = tokio::process::Command::new("docker")
        .args(["exec", name, "/bin/sh", "-c", script])
        .output()
        .await
        .expect("docker exec");
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// A plain-text `pg_dump` of the database at `url` (Norn's, in the tests
/// that look for a plaintext secret in it).
pub async fn pg_dump(url: &str) -> String {
    let out = tokio::process::Command::new("pg_dump")
        .arg(url)
        .output()
        .await
        .expect("pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn spec(app: &str, repo: &AppRepo, test: Option<&str>) -> Value {
    let mut spec = json!({
        "name": app,
        "repo": {"url": repo.url()},
        "processes": {"web": {"port": 8080, "health": {"path": "/health", "timeout": "2s"}}},
    });
    if let Some(t) = test {
        spec["build"] = json!({"test": t});
    }
    spec
}

/// The name of a container of one of `app`'s processes.
pub async fn running_instance(app: &str) -> String {
    let instance = all_containers()
        .await
        .into_iter()
        .find(|c| {
            c.labels.as_ref().is_some_and(|l| {
                l.get("norn.app").map(String::as_str) == Some(app) && l.contains_key("norn.process")
            })
        })
        .unwrap_or_else(|| panic!("no running instance of {app}"));
    instance.names.unwrap()[0]
        .trim_start_matches('/')
        .to_owned()
}

/// Every container on the engine, running or not.
pub async fn all_containers() -> Vec<bollard::models::ContainerSummary> {
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .build(),
        ))
        .await
        .unwrap()
}

/// Force-removes every container whose `norn.app` label starts with `prefix`.
pub async fn remove_containers(prefix: &str) {
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    for c in all_containers().await {
        let ours = c
            .labels
            .as_ref()
            .and_then(|l| l.get("norn.app"))
            .is_some_and(|a| a.starts_with(prefix));
        if ours {
            let _ = docker
                .remove_container(
                    c.id.as_deref().unwrap(),
                    Some(
                        bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                            .force(true)
                            .build(),
                    ),
                )
                .await;
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cron app on the busybox image: `command` every `schedule`.
pub fn cron_spec(app: &str, repo: &AppRepo, schedule: &str, command: &str, cron: Value) -> Value {
    json!({
        "name": app,
        "repo": {"url": repo.url()},
        "processes": {"job": {"schedule": schedule, "command": command, "cron": cron}},
    })
}

/// How a `norn` command ended.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `norn --api <api> <args>` with a clean environment for its own
/// settings. Async: the in-process API it talks to runs on this runtime.
pub async fn norn(api: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_norn"))
        .arg("--api")
        .arg(api)
        .args(args)
        .env_remove("NORN_URL")
        .env_remove("NORN_API_TOKEN")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), out)
        .await
        .unwrap_or_else(|_| panic!("norn {args:?} did not exit"))
        .unwrap();
    Run {
        code: out.status.code().expect("norn was killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
