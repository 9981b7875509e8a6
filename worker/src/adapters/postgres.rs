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
    /// A URL on the server holding app databases, as Norn's provisioning role
    /// (`NORN_APP_DATABASE_URL`: CREATEDB and CREATEROLE, not a superuser).
    pub server_url: String,
    /// The host app containers reach that server at (see `Config::app_database_host`).
    pub container_host: String,
}

/// An app's own database login (its role is named after its database).
#[derive(Clone)]
pub struct Login {
    pub role: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Login({}, ***)", self.role)
    }
}

fn failed(what: &str) -> impl Fn(sqlx::Error) -> SnapshotError + '_ {
    move |e| SnapshotError::Failed(format!("{what}: {e}"))
}

impl PgTools {
    fn bin(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    fn server(&self) -> Result<sqlx::postgres::PgConnectOptions, SnapshotError> {
        self.server_url
            .parse()
            .map_err(|e| SnapshotError::Failed(format!("NORN_APP_DATABASE_URL: {e}")))
    }

    /// The `DATABASE_URL` an app container gets: its own role, its own
    /// database, at a host the container can reach.
    pub fn container_url(&self, database: &str, login: &Login) -> Result<String, SnapshotError> {
        let port = self.server()?.get_port();
        Ok(format!(
            "postgres://{}:{}@{}:{port}/{database}",
            login.role, login.password, self.container_host
        ))
    }

    /// A Postgres tool run by Norn (on this host) as the app's role: the URL
    /// carries no password; it goes in `PGPASSWORD`, never on a command line.
    fn tool(&self, name: &str, database: &str, login: &Login) -> Result<Command, SnapshotError> {
        let server = self.server()?;
        let mut cmd = Command::new(self.bin(name));
        cmd.env("PGHOST", server.get_host())
            .env("PGPORT", server.get_port().to_string())
            .env("PGUSER", &login.role)
            .env("PGDATABASE", database)
            .env("PGPASSWORD", &login.password)
            .env_remove("PGPASSFILE")
            .env_remove("PGSERVICE");
        Ok(cmd)
    }

    /// A connection to the app's database as its own role, from this host
    /// (the change runner's).
    pub async fn connect_as(
        &self,
        database: &str,
        login: &Login,
    ) -> Result<sqlx::PgConnection, SnapshotError> {
        use sqlx::ConnectOptions;
        self.server()?
            .username(&login.role)
            .password(&login.password)
            .database(database)
            .connect()
            .await
            .map_err(failed("connecting to the app database as its role"))
    }

    async fn admin(&self) -> Result<sqlx::PgPool, SnapshotError> {
        sqlx::PgPool::connect(&self.server_url)
            .await
            .map_err(failed("connecting to the app database server"))
    }

    /// Whether `database` exists on the server.
    pub async fn exists(&self, database: &str) -> Result<bool, SnapshotError> {
        let pool = self.admin().await?;
        let row: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(database)
            .fetch_optional(&pool)
            .await
            .map_err(failed("reading pg_database"))?;
        pool.close().await;
        Ok(row.is_some())
    }

    /// `pg_dump -Fc` into `dir/<db>_<sha12>_<YYYYMMDDTHHMMSS>.dump`, as the app's role.
    pub async fn dump(
        &self,
        database: &str,
        login: &Login,
        sha12: &str,
        dir: &Path,
    ) -> Result<PathBuf, SnapshotError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| SnapshotError::Failed(format!("creating {}: {e}", dir.display())))?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
        let file = dir.join(format!("{database}_{sha12}_{stamp}.dump"));
        let partial = file.with_extension("dump.partial");
        let mut cmd = self.tool("pg_dump", database, login)?;
        cmd.arg("-Fc").arg("-f").arg(&partial);
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

    /// `pg_restore --clean --if-exists` of `file` into `database`, as the
    /// app's role, in one transaction: a restore that fails leaves the
    /// database as it was.
    pub async fn restore(
        &self,
        database: &str,
        login: &Login,
        file: &Path,
    ) -> Result<String, SnapshotError> {
        let mut cmd = self.tool("pg_restore", database, login)?;
        cmd.args([
            "--clean",
            "--if-exists",
            "--no-owner",
            "--single-transaction",
            "-d",
            database,
        ])
        .arg(file);
        run_tool(cmd, "pg_restore").await?;
        Ok(format!("restored {} into {database}", file.display()))
    }
}

#[async_trait::async_trait]
impl super::Provisioner for PgTools {
    async fn database(
        &self,
        grant: &super::DatabaseGrant<'_>,
    ) -> Result<String, super::ProvisionError> {
        let pool = self.admin().await.map_err(super::ProvisionError::from)?;
        let done = provision(&pool, grant).await;
        pool.close().await;
        done
    }

    async fn revoke_database(
        &self,
        revoke: &super::DatabaseRevoke<'_>,
    ) -> Result<String, super::ProvisionError> {
        let pool = self.admin().await.map_err(super::ProvisionError::from)?;
        let done = unprovision(&pool, revoke).await;
        pool.close().await;
        done
    }
}

async fn unprovision(
    pool: &sqlx::PgPool,
    r: &super::DatabaseRevoke<'_>,
) -> Result<String, super::ProvisionError> {
    use super::ProvisionError::Failed;
    let sql = |what: &'static str| move |e: sqlx::Error| Failed(format!("{what}: {e}"));
    let (role, db) = (r.role, r.database);
    let comment: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_optional(pool)
    .await
    .map_err(sql("reading pg_roles"))?;
    let Some((comment,)) = comment else {
        return Ok(format!("role {role} does not exist; nothing to revoke"));
    };
    if comment.as_deref() != Some(role_comment(r.app).as_str()) {
        return Err(Failed(format!(
            "role {role} was not made by Norn for app {}; leaving it alone",
            r.app
        )));
    }
    let mut done = Vec::new();
    run(pool, format!("ALTER ROLE \"{role}\" NOLOGIN"))
        .await
        .map_err(sql("revoking the login"))?;
    done.push(format!("role {role} may no longer log in"));
    let (ended,): (i64,) = sqlx::query_as(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
    )
    .bind(role)
    .fetch_one(pool)
    .await
    .map_err(sql("ending the role's sessions"))?;
    done.push(format!("{ended} session(s) ended"));
    if r.drop_data {
        run(
            pool,
            format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
        )
        .await
        .map_err(sql("dropping the database"))?;
        run(pool, format!("DROP ROLE IF EXISTS \"{role}\""))
            .await
            .map_err(sql("dropping the role"))?;
        done.push(format!("database {db} and role {role} dropped"));
    } else {
        done.push(format!("database {db} kept (dropData not set)"));
    }
    Ok(done.join("; "))
}

/// What marks a role as made by Norn for one app: Norn never takes over a
/// role it did not make (say, its own, or another tool's).
fn role_comment(app: &str) -> String {
    format!("norn app {app}")
}

async fn provision(
    pool: &sqlx::PgPool,
    g: &super::DatabaseGrant<'_>,
) -> Result<String, super::ProvisionError> {
    use super::ProvisionError::Failed;
    let sql = |what: &'static str| move |e: sqlx::Error| Failed(format!("{what}: {e}"));
    // Names match ^[a-z_][a-z0-9_]*$ (infraspec) and the verifier is
    // base64 and `$:` only: both are safe to quote as they are. Only the
    // verifier is sent, so the password is in no server log.
    let (role, db) = (g.role, g.database);
    let password = norn_shared::crypto::scram_sha256_verifier(g.password);
    let mut done = Vec::new();
    let existing: Option<(bool, Option<String>)> = sqlx::query_as(
        "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls,
                shobj_description(oid, 'pg_authid')
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_optional(pool)
    .await
    .map_err(sql("reading pg_roles"))?;
    match existing {
        None => {
            run(pool, format!(
                "CREATE ROLE \"{role}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
                 NOBYPASSRLS PASSWORD '{password}'"
            ))
            .await
            .map_err(sql("creating the app's role"))?;
            run(
                pool,
                format!("COMMENT ON ROLE \"{role}\" IS '{}'", role_comment(g.app)),
            )
            .await
            .map_err(sql("marking the app's role"))?;
            done.push(format!("created role {role}"));
        }
        Some((elevated, comment)) => {
            if elevated || comment.as_deref() != Some(role_comment(g.app).as_str()) {
                return Err(Failed(format!(
                    "role {role} already exists and was not made by Norn for app {}; \
                     refusing to take it over (choose another database name)",
                    g.app
                )));
            }
            run(
                pool,
                format!("ALTER ROLE \"{role}\" LOGIN PASSWORD '{password}'"),
            )
            .await
            .map_err(sql("setting the app role's password"))?;
            done.push(format!("role {role} exists (password set)"));
        }
    }
    // CREATE DATABASE … OWNER needs membership in the owner role (Postgres 15
    // lets a CREATEROLE role grant it to itself).
    run(pool, format!("GRANT \"{role}\" TO CURRENT_USER"))
        .await
        .map_err(sql("joining the app's role"))?;
    let owner: Option<(String,)> =
        sqlx::query_as("SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1")
            .bind(db)
            .fetch_optional(pool)
            .await
            .map_err(sql("reading pg_database"))?;
    match owner {
        None => {
            let created = run(pool, format!("CREATE DATABASE \"{db}\" OWNER \"{role}\"")).await;
            // Another worker may have created it meanwhile: fine if it is there now.
            if let Err(e) = created
                && !matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42P04"))
            {
                return Err(Failed(format!("creating database {db}: {e}")));
            }
            done.push(format!("created database {db} owned by {role}"));
        }
        Some((owner,)) if owner == role => done.push(format!("database {db} exists")),
        Some((owner,)) => {
            run(pool, format!("ALTER DATABASE \"{db}\" OWNER TO \"{role}\""))
                .await
                .map_err(|e| {
                    Failed(format!(
                        "database {db} exists, owned by {owner}, and cannot be handed to {role}: {e}"
                    ))
                })?;
            done.push(format!("database {db} handed from {owner} to {role}"));
        }
    }
    run(pool, format!("REVOKE ALL ON DATABASE \"{db}\" FROM PUBLIC"))
        .await
        .map_err(sql("revoking PUBLIC access"))?;
    done.push("CONNECT revoked from PUBLIC".into());
    Ok(done.join("; "))
}

async fn run(pool: &sqlx::PgPool, statement: String) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(pool)
        .await
        .map(|_| ())
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
