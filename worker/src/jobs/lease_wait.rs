//! Waiting for an app's lease: one mutating operation per app at a time.

use std::future::Future;
use std::time::Duration;

use norn_shared::db::lease;
use sqlx::postgres::PgListener;

use crate::WorkerError;
use crate::state::WorkerState;

/// Blocks until `holder` holds the lease of `app` and returns its fencing
/// token; `None` as soon as `still_wanted` says the operation ended while it
/// waited. Woken by the release NOTIFY; the 2 s retry covers leases that
/// expire instead of being released (their holder died).
pub async fn acquire<F, Fut>(
    state: &WorkerState,
    app: &str,
    holder: &str,
    operation: &str,
    still_wanted: F,
) -> Result<Option<i64>, WorkerError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<bool, WorkerError>>,
{
    let mut listener: Option<PgListener> = None;
    loop {
        if !still_wanted().await? {
            return Ok(None);
        }
        let ttl = state.config.lease_ttl;
        if let Some(token) = lease::try_acquire(&state.pool, app, holder, operation, ttl).await? {
            return Ok(Some(token));
        }
        if listener.is_none() {
            let mut l = PgListener::connect_with(&state.pool).await?;
            l.listen(lease::RELEASED_CHANNEL).await?;
            listener = Some(l);
            tracing::info!("waiting for the app's current operation to finish");
            continue;
        }
        if let Some(l) = listener.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), l.recv()).await;
        }
    }
}
