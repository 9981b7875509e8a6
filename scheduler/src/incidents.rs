//! Apps the scheduler has to skip. A stored spec that no longer validates
//! (a newer Norn tightened a rule) must not stop cron, health checks or
//! sweeps for every other app: the app is skipped, and the first time its
//! error is seen it is recorded on the app row and logged.

use norn_shared::db::apps::{self, App, AppError};
use sqlx::PgConnection;

use crate::SchedulerError;

/// Records the incident; logs it only when it is new.
pub async fn invalid_spec(
    conn: &mut PgConnection,
    app: &str,
    error: &str,
) -> Result<(), SchedulerError> {
    if apps::record_spec_error(conn, app, error).await? {
        tracing::warn!(
            app,
            error,
            "stored spec no longer validates; the scheduler skips this app until it is registered again"
        );
    }
    Ok(())
}

/// The app, `None` when it is gone or its spec is invalid (recorded).
pub async fn valid_app(conn: &mut PgConnection, app: &str) -> Result<Option<App>, SchedulerError> {
    match apps::get(conn, app).await {
        Ok(found) => Ok(found),
        Err(AppError::Invalid { errors, .. }) => {
            invalid_spec(conn, app, &errors.to_string()).await?;
            Ok(None)
        }
        Err(AppError::Db(e)) => Err(e.into()),
    }
}
