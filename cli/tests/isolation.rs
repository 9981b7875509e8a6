//! Tenant isolation, proved from inside the app's own containers (its
//! running instance, its test and its migrate container): an app reaches its
//! own database with its own role, and neither another app's database, nor
//! Norn's database or role, nor Norn's API. Real Postgres, Docker and git.

mod common;

use common::{AppRepo, Harness, exec_in, unique_app};
use serde_json::{Value, json};

/// What an app container tries, one `KEY=outcome` line per attempt. It
/// always exits 0: the test reads the lines, so a missing tool or a typo
/// shows as a missing line, never as a pass.
/// `control_port` is a port on the host that *is* open to containers: the
/// probe must see it, so "unreachable" means something.
fn probe_script(other_db: &str, norn_db: &str, api_port: u16, control_port: u16) -> String {
    format!(
        r#"hp=${{DATABASE_URL#*@}}; hp=${{hp%%/*}}; host=${{hp%:*}}
echo "OWN=$(psql -X -tAc 'select current_user' "$DATABASE_URL" 2>&1)"
try() {{ if out=$(psql -X -w -tAc 'select 1' "$2" 2>&1); then echo "$1=REACHED"; else echo "$1=REFUSED $out"; fi; }}
try OTHER "${{DATABASE_URL%/*}}/{other_db}"
try NORNROLE "postgres://postgres@$hp/postgres"
try NORNDB "${{DATABASE_URL%/*}}/{norn_db}"
reach() {{ if echo | busybox nc -w 3 "${{3:-$host}}" "$2" >/dev/null 2>&1; then echo "$1=REACHED"; else echo "$1=UNREACHABLE"; fi; }}
reach API {api_port}
reach CONTROL {control_port}
reach API_LOOPBACK {api_port} 127.0.0.1
try NORN_LOOPBACK "postgres://postgres@127.0.0.1:${{hp#*:}}/postgres"
busybox grep NoNewPrivs /proc/self/status
echo "PIDS=$(busybox cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || busybox cat /sys/fs/cgroup/pids.max)"
echo "NORNVARS=$(busybox env | busybox grep -c '^NORN_')"
true"#
    )
}

/// Asserts every line of the probe says the app was kept in its lane.
fn assert_isolated(where_: &str, output: &str, own_role: &str) {
    let line = |key: &str| {
        output
            .lines()
            .find(|l| l.starts_with(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{where_}: no {key} line in:\n{output}"))
            .to_owned()
    };
    assert_eq!(
        line("OWN"),
        format!("OWN={own_role}"),
        "{where_}:\n{output}"
    );
    for key in ["OTHER", "NORNROLE", "NORNDB"] {
        let l = line(key);
        assert!(
            l.starts_with(&format!("{key}=REFUSED"))
                && l.contains("pg_hba.conf rejects connection"),
            "{where_}: {l}"
        );
    }
    assert_eq!(line("API"), "API=UNREACHABLE", "{where_}");
    // The host's loopback (where the API and a `norn up` Postgres listen)
    // is not the container's.
    assert_eq!(line("API_LOOPBACK"), "API_LOOPBACK=UNREACHABLE", "{where_}");
    let l = line("NORN_LOOPBACK");
    assert!(
        l.starts_with("NORN_LOOPBACK=REFUSED") && l.contains("Connection refused"),
        "{where_}: {l}"
    );
    assert_eq!(line("CONTROL"), "CONTROL=REACHED", "{where_}");
    assert!(
        output.contains("NoNewPrivs:\t1"),
        "{where_}: no-new-privileges is off:\n{output}"
    );
    assert_eq!(line("PIDS"), "PIDS=512", "{where_}");
    assert_eq!(line("NORNVARS"), "NORNVARS=0", "{where_}");
}

fn db_spec(app: &str, repo: &AppRepo) -> Value {
    json!({
        "name": app,
        "repo": {"url": repo.url()},
        "processes": {"web": {"port": 8080, "health": {"path": "/health", "timeout": "2s"}}},
        "services": {"postgres": {"database": app.replace('-', "_")}},
    })
}

fn step_output(d: &Value, step: &str) -> String {
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == step)
        .unwrap_or_else(|| panic!("no {step} step in {d}"))["output"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn app_containers_reach_their_own_database_and_nothing_of_other_apps_or_norn() {
    let h = Harness::start().await;
    let (a, b) = (unique_app("isoa"), unique_app("isob"));
    let (a_db, b_db) = (a.replace('-', "_"), b.replace('-', "_"));
    let norn_db = h.db_url.rsplit('/').next().unwrap().to_owned();
    let api_port: u16 = h.api.rsplit(':').next().unwrap().parse().unwrap();

    let b_repo = AppRepo::create_with_psql(h.tmp.path(), &b);
    h.register_and_deploy(db_spec(&b, &b_repo)).await;

    let a_repo = AppRepo::create_with_psql(h.tmp.path(), &a);
    // Open on every address, so containers reach it at the gateway.
    let control = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let control_port = control.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((sock, _)) = control.accept().await {
            drop(sock);
        }
    });
    let probe = probe_script(&b_db, &norn_db, api_port, control_port);
    let mut spec = db_spec(&a, &a_repo);
    spec["build"] = json!({"test": probe});
    spec["migrations"] = json!({"command": probe});
    let (code, body) = h.post("/api/apps", spec).await;
    assert_eq!(code, 201, "{body}");
    let id = h.deploy(&a, "HEAD").await;
    let d = h.wait_terminal(&id).await;
    assert_eq!(d["status"], "deployed", "{d}");
    let forge = step_output(&d, "forge");
    assert!(forge.contains(&format!("created role {a_db}")), "{forge}");
    assert_isolated("test container", &step_output(&d, "test"), &a_db);
    assert_isolated("migrate container", &step_output(&d, "migrate"), &a_db);

    let name = common::running_instance(&a).await;
    let (code, output) = exec_in(&name, &probe).await;
    assert_eq!(code, 0, "{output}");
    assert_isolated("running instance", &output, &a_db);

    // The instance's host config, as the engine has it.
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let info = docker
        .inspect_container(
            &name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    let hc = info.host_config.unwrap();
    assert_ne!(hc.network_mode.as_deref(), Some("host"));
    assert_eq!(hc.cap_drop, Some(vec!["NET_RAW".to_string()]));
    assert_eq!(hc.memory, Some(512 * 1024 * 1024));
    assert_eq!(hc.memory_swap, hc.memory);
    assert_eq!(hc.privileged, Some(false));

    // Inside Postgres, behind the network rule: even on loopback (trusted),
    // A's role may not connect to B's database, and owns only its own.
    let as_a_to_b = format!("postgres://{a_db}@127.0.0.1:{}/{b_db}", pg_port(&h.db_url));
    let refused = sqlx::PgPool::connect(&as_a_to_b).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("permission denied for database"),
        "{refused}"
    );
    let (superuser, createrole, createdb): (bool, bool, bool) = sqlx::query_as(
        "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1",
    )
    .bind(&a_db)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!((superuser, createrole, createdb), (false, false, false));

    // The password is in A's containers and nowhere in Norn's database.
    let (_, url) = exec_in(&name, "echo $DATABASE_URL").await;
    let password = url
        .trim()
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(password.len(), 32, "{url}");
    let dump = common::pg_dump(&h.db_url).await;
    assert!(
        dump.contains("service_credentials"),
        "the dump is of Norn's database"
    );
    assert!(
        !dump.contains(&password),
        "the app's password is in Norn's database"
    );
    // Nor in the server's log, which records every DDL statement (.ci/pg.sh):
    // the role was created with a SCRAM verifier, not the password.
    let log: String = sqlx::query_scalar("SELECT pg_read_file('server.log')")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert!(
        log.contains(&format!("CREATE ROLE \"{a_db}\"")),
        "the server log does not record DDL (start it with .ci/pg.sh)"
    );
    assert!(
        !log.contains(&password),
        "the app's password is in the server's log"
    );
}

fn pg_port(url: &str) -> u16 {
    url.parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .get_port()
}

#[tokio::test]
async fn a_database_belongs_to_one_app_and_servers_own_names_are_refused() {
    let h = Harness::start().await;
    let (a, b) = (unique_app("owna"), unique_app("ownb"));
    let db = a.replace('-', "_");
    let spec = |app: &str, database: &str| {
        json!({"name": app, "processes": {"web": {"port": 8080}},
               "services": {"postgres": {"database": database}}})
    };
    let (code, body) = h.post("/api/apps", spec(&a, &db)).await;
    assert_eq!(code, 201, "{body}");
    // Registering A again with the same database is fine.
    assert_eq!(h.post("/api/apps", spec(&a, &db)).await.0, 200);

    let (code, body) = h.post("/api/apps", spec(&b, &db)).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["field"], "services.postgres.database", "{body}");
    assert!(body["error"].as_str().unwrap().contains(&a), "{body}");
    // Nothing of B was written.
    assert_eq!(h.get(&format!("/api/apps/{b}")).await.0, 404);

    let norn_db = h.db_url.rsplit('/').next().unwrap().to_owned();
    for reserved in [
        "postgres",
        "template0",
        "template1",
        "pg_signal",
        norn_db.as_str(),
    ] {
        let (code, body) = h.post("/api/apps", spec(&b, reserved)).await;
        assert_eq!(code, 400, "{reserved}: {body}");
        assert_eq!(body["field"], "services.postgres.database", "{body}");
    }

    // A moves to another database: its old name is free for B.
    let (code, _) = h.post("/api/apps", spec(&a, &format!("{db}_v2"))).await;
    assert_eq!(code, 200);
    let (code, body) = h.post("/api/apps", spec(&b, &db)).await;
    assert_eq!(code, 201, "{body}");
}

/// A git server that answers every request 401 asking for Basic
/// credentials, and counts requests and those that carried any.
async fn asking_git_server() -> (
    u16,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let with_credentials = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (r, w) = (requests.clone(), with_credentials.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (r, w) = (r.clone(), w.clone());
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|x| x == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                r.fetch_add(1, Ordering::SeqCst);
                if String::from_utf8_lossy(&req)
                    .to_ascii_lowercase()
                    .contains("\r\nauthorization:")
                {
                    w.fetch_add(1, Ordering::SeqCst);
                }
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm=\"git\"\r\n\
                          content-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    (port, requests, with_credentials)
}

#[tokio::test]
async fn the_git_token_is_never_sent_over_http_and_unsafe_repository_urls_are_refused() {
    use std::sync::atomic::Ordering;
    let (port, requests, with_credentials) = asking_git_server().await;
    let url = format!("http://127.0.0.1:{port}/app.git");
    let spec = |app: &str, url: &str| json!({"name": app, "repo": {"url": url}, "processes": {"web": {"port": 8080}}});

    // By default plain http, file:// and odd transports are refused at the door.
    let strict = Harness::start_with(|c| {
        c.git_policy.allow_local = false;
        c.git_token = Some(norn_shared::config::Secret::new("s3cret-git-token"));
    })
    .await;
    for bad in [url.as_str(), "file:///etc", "/root/.ssh", "ext::sh -c id"] {
        let (code, body) = strict
            .post("/api/apps", spec(&unique_app("gitno"), bad))
            .await;
        assert_eq!(
            (code, body["field"].as_str()),
            (400, Some("repo.url")),
            "{bad}: {body}"
        );
    }
    assert_eq!(requests.load(Ordering::SeqCst), 0);

    // Allowed explicitly, http still never gets the token.
    let lax = Harness::start_with(|c| {
        c.git_policy.allow_insecure = true;
        c.git_token = Some(norn_shared::config::Secret::new("s3cret-git-token"));
    })
    .await;
    let app = unique_app("githttp");
    assert_eq!(lax.post("/api/apps", spec(&app, &url)).await.0, 201);
    let id = lax.deploy(&app, "HEAD").await;
    let d = lax.wait_terminal(&id).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["failedStep"], "clone", "{d}");
    assert!(
        requests.load(Ordering::SeqCst) >= 1,
        "the clone never asked"
    );
    assert_eq!(
        with_credentials.load(Ordering::SeqCst),
        0,
        "credentials were sent over http"
    );
    assert!(!d.to_string().contains("s3cret-git-token"), "{d}");
}
