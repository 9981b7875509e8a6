//! The key-value server (Redis or Valkey) at `NORN_KV_URL`: what the API's
//! health report and the worker's provisioner both need of it.

use std::time::Duration;

/// How long a KV call may take before it counts as down.
pub const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KvError(pub String);

impl From<redis::RedisError> for KvError {
    fn from(e: redis::RedisError) -> Self {
        Self(e.to_string())
    }
}

/// An admin connection to the server at `url`, within [`TIMEOUT`].
pub async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection, KvError> {
    let client = redis::Client::open(url)?;
    match tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection()).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(KvError(format!(
            "the key-value server did not answer within {} s",
            TIMEOUT.as_secs()
        ))),
    }
}

/// Up (`Ok`) or down with the reason.
pub async fn ping(url: &str) -> Result<(), KvError> {
    let mut conn = connect(url).await?;
    let answer: Result<String, _> =
        tokio::time::timeout(TIMEOUT, redis::cmd("PING").query_async(&mut conn))
            .await
            .map_err(|_| KvError("PING timed out".into()))?;
    answer?;
    Ok(())
}

/// Host and port of the server at `url`, for the URL an app container gets.
pub fn address(url: &str) -> Result<(String, u16), KvError> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => Ok((host.clone(), *port)),
        other => Err(KvError(format!(
            "NORN_KV_URL must be a plain redis:// TCP address, not {other}"
        ))),
    }
}

/// A `redis-server` of Norn's own (`norn up`, the tests): data, config and
/// ACL file in `dir`, the admin password never on a command line.
pub struct LocalServer {
    child: std::process::Child,
    port: u16,
    password: String,
}

impl LocalServer {
    /// Whether `redis-server` is on this machine.
    pub fn available() -> bool {
        std::process::Command::new("redis-server")
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the server on `port`, listening on `binds`, and waits until it
    /// answers. The default user's password is set only when the ACL file is
    /// first written; later starts load the users the forge saved. With
    /// `die_with_parent` the kernel stops it when the thread that started it
    /// ends (`norn up` killed outright must not leave it running); the tests,
    /// whose threads end before their server is done with, stop it at exit.
    pub async fn start(
        dir: &std::path::Path,
        port: u16,
        password: &str,
        binds: &[&str],
        die_with_parent: bool,
    ) -> Result<Self, KvError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |what: &str| {
            let what = what.to_owned();
            move |e: std::io::Error| KvError(format!("{what}: {e}"))
        };
        std::fs::create_dir_all(dir).map_err(io("creating the key-value directory"))?;
        // Absolute: the server changes into `dir` before it reads the ACL file.
        let dir = &dir
            .canonicalize()
            .map_err(io("resolving the key-value directory"))?;
        let acl = dir.join("users.acl");
        if !acl.exists() {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&acl)
                .map_err(io("writing the ACL file"))?;
            std::io::Write::write_all(
                &mut file,
                format!("user default on >{password} ~* &* +@all\n").as_bytes(),
            )
            .map_err(io("writing the ACL file"))?;
        }
        // `shutdown-on-sigterm force`: on SIGTERM, exit even when the final
        // save fails (its directory deleted under it); otherwise the server
        // refuses to stop and keeps the port from the next `norn up`.
        let conf = dir.join("redis.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind {}\nprotected-mode no\ndaemonize no\ndir {}\n\
                 aclfile {}\nappendonly yes\nsave 60 1\nlogfile {}\n\
                 shutdown-on-sigterm force\n",
                binds.join(" "),
                dir.display(),
                acl.display(),
                dir.join("redis.log").display()
            ),
        )
        .map_err(io("writing redis.conf"))?;
        let mut command = std::process::Command::new("redis-server");
        command
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if die_with_parent {
            // SAFETY: prctl is async-signal-safe; nothing else runs between
            // fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().map_err(io("starting redis-server"))?;
        let mut server = Self {
            child,
            port,
            password: password.to_owned(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match ping(&server.url()).await {
                Ok(()) => return Ok(server),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    server.stop();
                    return Err(KvError(format!(
                        "redis-server did not come up on port {port} ({e}); see {}",
                        dir.join("redis.log").display()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The admin URL (`NORN_KV_URL`).
    pub fn url(&self) -> String {
        format!("redis://default:{}@127.0.0.1:{}", self.password, self.port)
    }

    /// Stops the server, letting it write its data out (SIGTERM), and waits.
    pub fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let _ = self.child.wait();
    }
}
