//! `Snapshotter`: `pg_dump -Fc` of an app database, and app database
//! connection strings derived from the configured server.

use std::path::{Path, PathBuf};

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Failed(String),
}

pub struct PgTools {
    pub bin_dir: Option<PathBuf>,
    /// A URL on the server holding app databases; its database name is replaced.
    pub server_url: String,
}

impl PgTools {
    fn bin(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    pub fn database_url(&self, database: &str) -> String {
        norn_shared::db::with_database(&self.server_url, database)
    }

    /// Whether `database` exists on the server.
    pub async fn exists(&self, database: &str) -> Result<bool, SnapshotError> {
        let pool = sqlx::PgPool::connect(&self.server_url).await.map_err(|e| {
            SnapshotError::Failed(format!("connecting to the app database server: {e}"))
        })?;
        let row: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(database)
            .fetch_optional(&pool)
            .await
            .map_err(|e| SnapshotError::Failed(e.to_string()))?;
        pool.close().await;
        Ok(row.is_some())
    }

    /// Creates `database` if missing (until the forge issue provisions it).
    pub async fn ensure(&self, database: &str) -> Result<bool, SnapshotError> {
        if self.exists(database).await? {
            return Ok(false);
        }
        let pool = sqlx::PgPool::connect(&self.server_url)
            .await
            .map_err(|e| SnapshotError::Failed(e.to_string()))?;
        // The name was validated as ^[a-z_][a-z0-9_]*$ by the infraspec.
        let res = sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{database}\""
        )))
        .execute(&pool)
        .await;
        pool.close().await;
        match res {
            Ok(_) => Ok(true),
            Err(_) if self.exists(database).await? => Ok(false),
            Err(e) => Err(SnapshotError::Failed(format!(
                "creating database {database}: {e}"
            ))),
        }
    }

    /// `pg_dump -Fc` into `dir/<db>_<sha12>_<YYYYMMDDTHHMMSS>.dump`.
    pub async fn dump(
        &self,
        database: &str,
        sha12: &str,
        dir: &Path,
    ) -> Result<PathBuf, SnapshotError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| SnapshotError::Failed(format!("creating {}: {e}", dir.display())))?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
        let file = dir.join(format!("{database}_{sha12}_{stamp}.dump"));
        let partial = file.with_extension("dump.partial");
        let mut cmd = Command::new(self.bin("pg_dump"));
        cmd.arg("-Fc")
            .arg("-d")
            .arg(self.database_url(database))
            .arg("-f")
            .arg(&partial);
        if let Err(e) = run_tool(cmd, "pg_dump").await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        // Only complete dumps carry the final name, so a crash never leaves a
        // truncated file that looks restorable.
        tokio::fs::rename(&partial, &file)
            .await
            .map_err(|e| SnapshotError::Failed(format!("renaming dump: {e}")))?;
        Ok(file)
    }

    /// `pg_restore --clean --if-exists` of `file` into `database`, in one
    /// transaction: a restore that fails leaves the database as it was.
    pub async fn restore(&self, database: &str, file: &Path) -> Result<String, SnapshotError> {
        let mut cmd = Command::new(self.bin("pg_restore"));
        cmd.args([
            "--clean",
            "--if-exists",
            "--no-owner",
            "--single-transaction",
            "-d",
        ])
        .arg(self.database_url(database))
        .arg(file);
        run_tool(cmd, "pg_restore").await?;
        Ok(format!("restored {} into {database}", file.display()))
    }
}

/// What a Postgres tool may say when it fails: the end of its stderr.
const TOOL_STDERR: usize = 16 * 1024;

/// Runs a Postgres tool to its end. Its stderr is read as it comes and only
/// the end is kept (a restore of a large dump can print an error per
/// object); stdout is not read. Killed if the caller is dropped (a canceled
/// or timed-out step must not leave it running).
async fn run_tool(mut cmd: Command, name: &str) -> Result<(), SnapshotError> {
    use tokio::io::AsyncReadExt;
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| SnapshotError::Failed(format!("running {program}: {e}")))?;
    let mut tail = norn_shared::text::Tail::new(TOOL_STDERR);
    if let Some(mut stderr) = child.stderr.take() {
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tail.push(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| SnapshotError::Failed(format!("waiting for {name}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(SnapshotError::Failed(format!(
            "{name} exited with {status}: {}",
            tail.finish().trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_tool_reports_the_end_of_its_stderr_in_bounded_space() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "yes 'pg_restore: error: could not execute query' | head -c 1000000 >&2; echo last-words >&2; exit 3",
        ]);
        let SnapshotError::Failed(message) = run_tool(cmd, "pg_restore").await.unwrap_err();
        assert!(
            message.starts_with("pg_restore exited with"),
            "{message:.200}"
        );
        assert!(message.ends_with("last-words"), "{message:.200}");
        assert!(message.contains("bytes omitted"), "{message:.200}");
        assert!(message.len() < TOOL_STDERR + 200, "{} bytes", message.len());
    }
}
