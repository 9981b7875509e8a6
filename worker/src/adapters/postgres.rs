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
        let out = Command::new(self.bin("pg_dump"))
            // A canceled or timed-out snapshot step must not leave pg_dump running.
            .kill_on_drop(true)
            .arg("-Fc")
            .arg("-d")
            .arg(self.database_url(database))
            .arg("-f")
            .arg(&partial)
            .output()
            .await
            .map_err(|e| {
                SnapshotError::Failed(format!("running {}: {e}", self.bin("pg_dump").display()))
            })?;
        if !out.status.success() {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(SnapshotError::Failed(format!(
                "pg_dump exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
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
        let out = Command::new(self.bin("pg_restore"))
            .kill_on_drop(true)
            .args([
                "--clean",
                "--if-exists",
                "--no-owner",
                "--single-transaction",
                "-d",
            ])
            .arg(self.database_url(database))
            .arg(file)
            .output()
            .await
            .map_err(|e| {
                SnapshotError::Failed(format!("running {}: {e}", self.bin("pg_restore").display()))
            })?;
        if !out.status.success() {
            return Err(SnapshotError::Failed(format!(
                "pg_restore exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(format!("restored {} into {database}", file.display()))
    }
}
