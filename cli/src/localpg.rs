//! A private PostgreSQL cluster under `.norn/pg` for `norn up` when no
//! `DATABASE_URL` is given, made with the machine's PostgreSQL binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

pub struct LocalPg {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

/// initdb refuses to run as root; as root the cluster belongs to `postgres`.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl LocalPg {
    pub fn new(bin: Option<PathBuf>, root: &Path, port: u16) -> anyhow::Result<Self> {
        let Some(bin) = bin.filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        else {
            bail!(
                "DATABASE_URL is not set and no PostgreSQL server binaries (initdb, pg_ctl) were found \
                 under /usr/lib/postgresql/*/bin; install PostgreSQL or set NORN_PG_BIN_DIR or DATABASE_URL"
            );
        };
        Ok(Self {
            bin,
            data: root.join("pg"),
            port,
        })
    }

    pub fn url(&self) -> String {
        format!("postgres://norn@127.0.0.1:{}/norn", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
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
    fn client(&self, tool: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let port = self.port.to_string();
        let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-U", "norn"];
        all.extend_from_slice(args);
        self.run(tool, &all)
    }

    /// Initialises (first time) and starts the cluster; idempotent.
    pub fn start(&self) -> anyhow::Result<()> {
        let data = self.data.to_string_lossy().to_string();
        if !self.data.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&self.data)?;
            if is_root() {
                let status = Command::new("chown")
                    .args(["-R", "postgres:", &data])
                    .status()?;
                if !status.success() {
                    bail!("could not hand {data} to the postgres user");
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
                bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let status = self.run("pg_ctl", &["-D", &data, "status"])?;
        if status.status.success() {
            return Ok(());
        }
        let opts = format!("-h 127.0.0.1 -p {} -k {data}", self.port);
        let log = format!("{data}/server.log");
        let out = self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-o", &opts, "start"],
        )?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed (see {log}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = self.client(
            "psql",
            &[
                "-d",
                "postgres",
                "-tAc",
                "SELECT 1 FROM pg_database WHERE datname = 'norn'",
            ],
        )?;
        if String::from_utf8_lossy(&out.stdout).trim() != "1" {
            let out = self.client("createdb", &["norn"])?;
            if !out.status.success() {
                bail!("createdb failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }

    pub fn stop(&self) {
        let data = self.data.to_string_lossy().to_string();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "fast", "stop"]);
    }
}
