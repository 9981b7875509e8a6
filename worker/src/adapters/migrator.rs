//! The `Migrator` seam: Norn's change runner (`norn_shared::changes`) on an
//! app database, as the app's own role. The migrate step and the change-run
//! job see sessions, changes and reports, never a database driver; errors are
//! the runner's messages.

use std::sync::Arc;

use async_trait::async_trait;
use norn_shared::changes::{self, Change, ChangeRun, ChangeStatus, Options, RunError};
use norn_shared::db::changes::{self as track, Holder};

use super::postgres::{Login, PgTools};

/// What the runner reported: drift, a held lock, a change that cannot be
/// reverted, or the database's own error, as the user should read it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MigrateError(pub String);

impl From<RunError> for MigrateError {
    fn from(e: RunError) -> Self {
        Self(e.to_string())
    }
}

/// Opens change sessions on app databases.
#[async_trait]
pub trait Migrator: Send + Sync {
    /// A session on `database` as `login` (the app's own role).
    async fn open(
        &self,
        database: &str,
        login: &Login,
    ) -> Result<Box<dyn ChangeSession>, MigrateError>;
}

/// One connection's worth of change-runner operations (see
/// `norn_shared::changes` for what each does).
#[async_trait]
pub trait ChangeSession: Send {
    /// Who holds the change lock of `scope` now, if anyone.
    async fn held(&mut self, scope: &str) -> Result<Option<Holder>, MigrateError>;
    async fn status(&mut self, changes: &[Change]) -> Result<Vec<ChangeStatus>, MigrateError>;
    async fn apply(
        &mut self,
        changes: &[Change],
        opts: &Options,
        force: bool,
    ) -> Result<Vec<ChangeRun>, MigrateError>;
    async fn dry_run(&mut self, changes: &[Change]) -> Result<Vec<ChangeRun>, MigrateError>;
    async fn revert(
        &mut self,
        changes: &[Change],
        name: &str,
        opts: &Options,
    ) -> Result<ChangeRun, MigrateError>;
    /// The newest `n` applied changes, newest first (what a rewind reverts).
    async fn newest_applied(&mut self, n: usize) -> Result<Vec<String>, MigrateError>;
}

/// The runner on the app database server Norn provisions apps on.
pub struct PgMigrator {
    pub pg: Arc<PgTools>,
}

#[async_trait]
impl Migrator for PgMigrator {
    async fn open(
        &self,
        database: &str,
        login: &Login,
    ) -> Result<Box<dyn ChangeSession>, MigrateError> {
        let conn = self
            .pg
            .connect_as(database, login)
            .await
            .map_err(|e| MigrateError(e.to_string()))?;
        Ok(Box::new(PgSession { conn }))
    }
}

struct PgSession {
    conn: sqlx::PgConnection,
}

#[async_trait]
impl ChangeSession for PgSession {
    async fn held(&mut self, scope: &str) -> Result<Option<Holder>, MigrateError> {
        track::held(&mut self.conn, scope)
            .await
            .map_err(|e| RunError::Db(e).into())
    }

    async fn status(&mut self, changes: &[Change]) -> Result<Vec<ChangeStatus>, MigrateError> {
        Ok(changes::status(&mut self.conn, changes).await?)
    }

    async fn apply(
        &mut self,
        changes: &[Change],
        opts: &Options,
        force: bool,
    ) -> Result<Vec<ChangeRun>, MigrateError> {
        Ok(changes::apply(&mut self.conn, changes, opts, force).await?)
    }

    async fn dry_run(&mut self, changes: &[Change]) -> Result<Vec<ChangeRun>, MigrateError> {
        Ok(changes::dry_run(&mut self.conn, changes).await?)
    }

    async fn revert(
        &mut self,
        changes: &[Change],
        name: &str,
        opts: &Options,
    ) -> Result<ChangeRun, MigrateError> {
        Ok(changes::revert(&mut self.conn, changes, name, opts).await?)
    }

    async fn newest_applied(&mut self, n: usize) -> Result<Vec<String>, MigrateError> {
        Ok(changes::newest_applied(&mut self.conn, n).await?)
    }
}
