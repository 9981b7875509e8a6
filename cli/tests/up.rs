//! `norn up` as a new user runs it: no `DATABASE_URL`, a fresh directory,
//! the example app, the CLI to deploy it and the ingress to reach it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::procs::{self, Proc};
use common::{eventually, unique_app};

fn copy_example(to: &Path, app: &str) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    std::fs::create_dir_all(to.join("www")).unwrap();
    for file in ["Dockerfile", "www/index.html", "www/health"] {
        std::fs::copy(example.join(file), to.join(file)).unwrap();
    }
    let spec = std::fs::read_to_string(example.join("infraspec.yaml")).unwrap();
    std::fs::write(
        to.join("infraspec.yaml"),
        spec.replace("name: hello", &format!("name: {app}")),
    )
    .unwrap();
    // What examples/hello/prepare.sh does.
    let status = Command::new("bash")
        .arg(example.join("prepare.sh"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::rename(example.join("busybox"), to.join("busybox")).unwrap();
}

/// An app directory whose image has psql, and whose test step creates a
/// table in its database: it deploys only if the app reaches its own
/// database, as its own role, from its container.
fn db_app(to: &Path, app: &str) {
    std::fs::create_dir_all(to.join("www")).unwrap();
    std::fs::copy("/bin/busybox", to.join("busybox")).unwrap();
    common::copy_with_libraries(&common::psql_binary(), &to.join("rootfs"));
    std::fs::create_dir_all(to.join("rootfs/etc")).unwrap();
    std::fs::write(to.join("rootfs/etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    std::fs::write(to.join("www/health"), "ok\n").unwrap();
    std::fs::write(
        to.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nCOPY rootfs /\nCOPY www /www\n\
         CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .unwrap();
    let db = app.replace('-', "_");
    std::fs::write(
        to.join("infraspec.yaml"),
        format!(
            "name: {app}\n\
             build:\n  test: psql -X -v ON_ERROR_STOP=1 \"$DATABASE_URL\" -c 'CREATE TABLE IF NOT EXISTS seen (at timestamptz)' -c 'INSERT INTO seen VALUES (now())' -c 'SELECT current_user'\n\
             processes:\n  web:\n    port: 8080\n    health: {{path: /health}}\n\
             services:\n  postgres: {{database: {db}}}\n  kv: {{namespace: {app}}}\n"
        ),
    )
    .unwrap();
}

fn norn_deploy(api: &str, app: &str) -> String {
    let deploy = Command::new(procs::bin("norn"))
        .args(["--api", api, "deploy", app])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&deploy.stdout).into_owned();
    assert_eq!(
        deploy.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&deploy.stderr)
    );
    out
}

struct Up {
    dir: std::path::PathBuf,
    api_port: u16,
    ingress_port: u16,
    pg_port: u16,
    kv_port: u16,
}

impl Up {
    fn command(&self) -> Command {
        let mut cmd = Command::new(procs::bin("norn"));
        cmd.arg("up")
            .current_dir(&self.dir)
            .env_remove("DATABASE_URL")
            .env_remove("NORN_DATABASE_URL")
            .env("NORN_PORT", self.api_port.to_string())
            .env("NORN_INGRESS_PORT", self.ingress_port.to_string())
            .env("NORN_LOCAL_PG_PORT", self.pg_port.to_string())
            .env("NORN_LOCAL_KV_PORT", self.kv_port.to_string())
            .env_remove("NORN_KV_URL")
            .env("NORN_APPS_DIR", "apps")
            .env("NORN_WORK_DIR", self.dir.join("work"))
            .env("NORN_DOCKER_NETWORK", "norn-test")
            .env("NORN_DRAIN_GRACE", "200ms")
            .env("RUST_LOG", "warn");
        cmd
    }

    /// Where `norn up` put the cluster (`.norn/pg`, or elsewhere when root
    /// cannot hand the directory to the postgres user).
    fn data_dir(&self) -> String {
        std::fs::read_to_string(self.dir.join(".norn/pg.path"))
            .map(|p| p.trim().to_owned())
            .unwrap_or_else(|_| self.dir.join(".norn/pg").display().to_string())
    }
}

fn cluster_accepts(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Copies the child's stderr to ours (so its log stays visible) and keeps it
/// for assertions.
fn tee_stderr(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::BufRead;
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = said.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("{line}");
            let mut text = sink.lock().unwrap();
            if text.len() < 1 << 20 {
                text.push_str(&line);
                text.push('\n');
            }
        }
    });
    said
}

#[tokio::test(flavor = "multi_thread")]
async fn norn_up_without_database_url_deploys_the_example_and_stops_its_postgres() {
    let tmp = tempfile::tempdir().unwrap();
    let app = unique_app("up");
    copy_example(&tmp.path().join("apps").join(&app), &app);
    let with_db = unique_app("updb");
    db_app(&tmp.path().join("apps").join(&with_db), &with_db);
    let up = Up {
        dir: tmp.path().to_owned(),
        api_port: procs::free_port(),
        ingress_port: procs::free_port(),
        pg_port: procs::free_port(),
        kv_port: procs::free_port(),
    };
    let mut server = Proc(
        up.command()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let said = tee_stderr(&mut server.0);
    let api = format!("http://127.0.0.1:{}", up.api_port);
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(120), "norn up to serve", || async {
        let r = http.get(format!("{api}/api/health")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    norn_shared::testing::track(norn_shared::testing::Leftover::Cluster(up.data_dir()));
    // It says where it serves and how to reach an app.
    let serves = format!("api on http://127.0.0.1:{}", up.api_port);
    let reach = format!("http://<app>.localhost:{}", up.ingress_port);
    let announced = eventually(Duration::from_secs(10), "the announcement", || {
        let text = said.lock().unwrap().clone();
        let found = text.contains(&serves) && text.contains(&reach);
        async move { found.then_some(text) }
    })
    .await;
    assert!(announced.contains("Ctrl-C stops everything"), "{announced}");
    assert!(cluster_accepts(up.pg_port), "the private Postgres is up");
    assert!(
        cluster_accepts(up.kv_port),
        "the private redis-server is up"
    );

    // A second `norn up` in the same directory refuses clearly.
    let second = up.command().output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already running"), "{err}");

    // The app from NORN_APPS_DIR deploys through the CLI and answers on the ingress.
    let out = norn_deploy(&api, &app);
    assert!(out.contains("deployed"), "{out}");
    // An app with a database: forged in the private cluster (its own role,
    // reached at the app network's gateway), its password sealed with the
    // key norn up made.
    let out = norn_deploy(&api, &with_db);
    assert!(out.contains(&with_db.replace('-', "_")), "{out}");
    let key = tmp.path().join(".norn/secret.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let ingress: std::net::SocketAddr = ([127, 0, 0, 1], up.ingress_port).into();
    let body = common::app_get(&http, ingress, &app).await.unwrap();
    assert_eq!(body.trim(), "hello from norn");

    // Ctrl-C stops everything, the private cluster included.
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let code = eventually(Duration::from_secs(60), "norn up to exit", || {
        let exited = server.0.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert!(code.success(), "norn up exited with {code}");
    assert!(
        !cluster_accepts(up.pg_port),
        "the private Postgres still accepts connections after norn up stopped"
    );
    assert!(
        !cluster_accepts(up.kv_port),
        "the private redis-server still accepts connections after norn up stopped"
    );
    assert!(
        !Path::new(&up.data_dir()).join("postmaster.pid").exists(),
        "the private Postgres left its pid file: not stopped cleanly"
    );

    // A second start reuses the cluster: the app is still registered and deployed.
    let _again = Proc(
        up.command()
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let apps = eventually(Duration::from_secs(120), "norn up to come back", || async {
        let r = http
            .get(format!("{api}/api/apps/{app}"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())?;
        r.json::<serde_json::Value>().await.ok()
    })
    .await;
    let deployments = apps["deployments"].as_array().cloned().unwrap_or_default();
    assert!(
        deployments.iter().any(|d| d["status"] == "deployed"),
        "the restarted norn up lost the deployment: {apps}"
    );
    // The same key after the restart: the app's sealed password still opens,
    // so it deploys again and its test step reaches its database.
    norn_deploy(&api, &with_db);
}
