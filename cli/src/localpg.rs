//! A private PostgreSQL cluster for `norn up` when no `DATABASE_URL` is given,
//! made with the machine's PostgreSQL binaries.
//!
//! The state directory (`.norn/` in the working directory) holds a lock file:
//! one `norn up` per directory, so two never initialise or start the same
//! cluster at once. The cluster has no Unix socket (a socket path is
//! resolved relative to the data directory and is limited to ~100 bytes;
//! TCP avoids both). It listens on 127.0.0.1, where Norn connects (trusted:
//! only this machine's own processes reach it), and on the app network's
//! gateway, where app containers reach their databases: there only an app's
//! own role may log in, with its password, to the database named like it
//! (`samerole`), and everything else is rejected.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};

pub struct LocalPg {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// Held for the life of `norn up`: the OS drops it if the process dies.
    _lock: File,
}

/// initdb and postgres refuse to run as root; as root the cluster belongs to `postgres`.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if s.is_empty() {
        s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    s
}

/// FNV-1a: a stable name for a fallback data directory.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

impl LocalPg {
    /// Locks `state_dir` (relative paths are taken from the working directory)
    /// and picks the data directory. Fails clearly when the binaries are
    /// missing or another `norn up` holds the lock.
    pub fn prepare(bin: Option<PathBuf>, state_dir: &Path, port: u16) -> anyhow::Result<Self> {
        let Some(bin) = bin.filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        else {
            bail!(
                "DATABASE_URL is not set and no PostgreSQL server binaries (initdb, pg_ctl) were found \
                 under /usr/lib/postgresql/*/bin; install PostgreSQL (Debian: apt-get install postgresql) \
                 or set NORN_PG_BIN_DIR or DATABASE_URL"
            );
        };
        let root = std::path::absolute(state_dir)
            .with_context(|| format!("resolving {}", state_dir.display()))?;
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let lock_path = root.join("up.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        if let Err(e) = lock.try_lock() {
            match e {
                std::fs::TryLockError::WouldBlock => bail!(
                    "another `norn up` is already running with state in {} (lock {} is held); \
                     stop it first (Ctrl-C) or run from another directory",
                    root.display(),
                    lock_path.display()
                ),
                std::fs::TryLockError::Error(e) => {
                    return Err(e).with_context(|| format!("locking {}", lock_path.display()));
                }
            }
        }
        let data = Self::data_dir(&root)?;
        Ok(Self {
            bin,
            data,
            port,
            _lock: lock,
        })
    }

    /// `<state>/pg`, unless we are root and the `postgres` user cannot reach
    /// it (a working directory under `/root`, or a 0700 temp dir): then a
    /// directory of its own under `/var/lib/norn`, named after the state
    /// directory so the next `norn up` there finds the same cluster.
    fn data_dir(root: &Path) -> anyhow::Result<PathBuf> {
        let inside = root.join("pg");
        if !is_root() {
            return Ok(inside);
        }
        let reachable = Command::new("runuser")
            .args(["-u", "postgres", "--", "test", "-x"])
            .arg(root)
            .status()
            .with_context(|| "running runuser (as root, Postgres runs as the `postgres` user)")?
            .success();
        let data = if reachable {
            inside
        } else {
            let base = PathBuf::from("/var/lib/norn");
            std::fs::create_dir_all(&base)?;
            base.join(format!("pg-{:016x}", fnv(&root.to_string_lossy())))
        };
        // Tells people (and tests) where the data lives.
        std::fs::write(root.join("pg.path"), format!("{}\n", data.display()))?;
        Ok(data)
    }

    pub fn url(&self) -> String {
        format!("postgres://norn@127.0.0.1:{}/norn", self.port)
    }

    pub fn data(&self) -> &Path {
        &self.data
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<Output> {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .output()
            .with_context(|| format!("running {}", exe.display()))
    }

    /// A client tool connected to this cluster as `norn`.
    fn client(&self, tool: &str, args: &[&str]) -> anyhow::Result<Output> {
        let port = self.port.to_string();
        let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-U", "norn"];
        all.extend_from_slice(args);
        self.run(tool, &all)
    }

    fn data_str(&self) -> String {
        self.data.to_string_lossy().into_owned()
    }

    fn init(&self) -> anyhow::Result<()> {
        let data = self.data_str();
        // A half-made directory (initdb interrupted) has no PG_VERSION; initdb
        // wants an empty one.
        if self.data.exists() {
            std::fs::remove_dir_all(&self.data)
                .with_context(|| format!("clearing the unfinished cluster in {data}"))?;
        }
        std::fs::create_dir_all(&self.data)?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:", &data])
                .status()?;
            if !status.success() {
                bail!("could not hand {data} to the postgres user (does it exist?)");
            }
        }
        let out = self.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "norn",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        if !out.status.success() {
            bail!("initdb failed: {}", text(&out));
        }
        Ok(())
    }

    fn is_running(&self) -> anyhow::Result<bool> {
        Ok(self
            .run("pg_ctl", &["-D", &self.data_str(), "status"])?
            .status
            .success())
    }

    /// Who may connect from where (rewritten at every start, so a cluster
    /// made by an older Norn gets these rules too).
    fn write_hba(&self) -> anyhow::Result<()> {
        let hba = "# Written by norn up at every start.\n\
                   host    all       all   127.0.0.1/32  trust\n\
                   host    all       norn,norn_provisioner  0.0.0.0/0  reject\n\
                   host    norn,postgres,template0,template1  all  0.0.0.0/0  reject\n\
                   host    samerole  all   0.0.0.0/0     scram-sha-256\n\
                   host    all       all   0.0.0.0/0     reject\n";
        std::fs::write(self.data.join("pg_hba.conf"), hba)
            .with_context(|| format!("writing {}/pg_hba.conf", self.data_str()))
    }

    /// Initialises (first time) and starts the cluster, listening on
    /// loopback and on `app_gateway` (the app network's side of the host). A
    /// cluster left running by a `norn up` that was killed is restarted with
    /// this run's settings.
    pub fn start(&self, app_gateway: Option<&str>) -> anyhow::Result<()> {
        let data = self.data_str();
        if !self.data.join("PG_VERSION").exists() {
            self.init()?;
        } else if self.is_running()? {
            self.stop();
        }
        self.write_hba()?;
        // No Unix socket (see the module comment).
        let listen = match app_gateway {
            Some(gateway) => format!("127.0.0.1,{gateway}"),
            None => "127.0.0.1".into(),
        };
        let opts = format!(
            "-c listen_addresses={listen} -p {} -c unix_socket_directories=''",
            self.port
        );
        let log = format!("{data}/server.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &opts, "start",
            ],
        )?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            let hint = if tail.contains("Address already in use") {
                format!(
                    "\nport {} is taken by another program: set NORN_LOCAL_PG_PORT",
                    self.port
                )
            } else {
                String::new()
            };
            bail!(
                "the private Postgres did not start ({}); {log} says:\n{tail}{hint}",
                text(&out)
            );
        }
        self.ensure_database()
    }

    fn ensure_database(&self) -> anyhow::Result<()> {
        let out = self.psql("-tAc", "SELECT 1 FROM pg_database WHERE datname = 'norn'")?;
        if !out.status.success() {
            bail!("could not query the private Postgres: {}", text(&out));
        }
        if String::from_utf8_lossy(&out.stdout).trim() != "1" {
            let out = self.client("createdb", &["norn"])?;
            if !out.status.success() {
                bail!("createdb failed: {}", text(&out));
            }
        }
        // App databases are made by a role that may create databases and
        // roles but is no superuser (NORN_APP_DATABASE_URL).
        let exists = self.psql(
            "-tAc",
            "SELECT 1 FROM pg_roles WHERE rolname = 'norn_provisioner'",
        )?;
        if String::from_utf8_lossy(&exists.stdout).trim() != "1" {
            let out = self.psql(
                "-c",
                "CREATE ROLE norn_provisioner LOGIN CREATEDB CREATEROLE",
            )?;
            if !out.status.success() {
                bail!("creating the provisioning role failed: {}", text(&out));
            }
        }
        Ok(())
    }

    /// `psql` on the `postgres` database, stopping at the first error;
    /// `flag` is `-c` or `-tAc` (bare output).
    fn psql(&self, flag: &str, sql: &str) -> anyhow::Result<Output> {
        self.client(
            "psql",
            &["-d", "postgres", "-v", "ON_ERROR_STOP=1", flag, sql],
        )
    }

    /// `NORN_APP_DATABASE_URL` for this cluster: the provisioning role.
    pub fn provisioner_url(&self) -> String {
        format!(
            "postgres://norn_provisioner@127.0.0.1:{}/postgres",
            self.port
        )
    }

    pub fn stop(&self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", &self.data_str(), "-m", "fast", "-w", "stop"],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::LocalPg;

    #[test]
    fn missing_postgres_binaries_are_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = LocalPg::prepare(Some(tmp.path().join("nope")), &tmp.path().join(".norn"), 1)
            .err()
            .expect("no binaries must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("initdb, pg_ctl") && msg.contains("DATABASE_URL"),
            "{msg}"
        );
        let err = LocalPg::prepare(None, &tmp.path().join(".norn"), 1)
            .err()
            .expect("no binaries must fail");
        assert!(err.to_string().contains("NORN_PG_BIN_DIR"), "{err}");
    }

    #[test]
    fn a_second_prepare_in_one_directory_is_refused_while_the_first_holds_it() {
        let bin = norn_shared::Config::from_env()
            .ok()
            .and_then(|c| c.pg_bin_dir())
            .expect("PostgreSQL server binaries under /usr/lib/postgresql");
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join(".norn");
        let first = LocalPg::prepare(Some(bin.clone()), &state, 1).unwrap();
        let err = LocalPg::prepare(Some(bin.clone()), &state, 1)
            .err()
            .expect("the lock is held");
        assert!(err.to_string().contains("already running"), "{err}");
        drop(first);
        assert!(LocalPg::prepare(Some(bin), &state, 1).is_ok());
    }
}
