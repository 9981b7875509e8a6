//! Waiting for an app's lease: one mutating operation per app at a time.

use std::future::Future;
use std::time::Duration;

use norn_shared::db::lease;
use sqlx::postgres::PgListener;

use crate::WorkerError;
use crate::state::WorkerState;

/// Whether an operation waiting for the lease may take it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Take the lease as soon as it is free.
    Go,
    /// Another operation of the app goes first, even if the lease is free.
    Wait,
    /// The operation ended while it waited (canceled, superseded, done).
    Gone,
}

/// Blocks until `holder` holds the lease of `app` and returns its fencing
/// token; `None` as soon as `turn` says the operation is gone. Woken by the
/// release NOTIFY; the 2 s retry covers leases that expire instead of being
/// released (their holder died).
pub async fn acquire<F, Fut>(
    state: &WorkerState,
    app: &str,
    holder: &str,
    operation: &str,
    turn: F,
) -> Result<Option<i64>, WorkerError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Turn, WorkerError>>,
{
    let mut listener: Option<PgListener> = None;
    loop {
        match turn().await? {
            Turn::Gone => return Ok(None),
            Turn::Wait => {}
            Turn::Go => {
                let ttl = state.config.lease_ttl;
                let got = lease::try_acquire(&state.pool, app, holder, operation, ttl).await?;
                if let Some(token) = got {
                    return Ok(Some(token));
                }
            }
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

/// Runs `work` with the lease token of `app`, held by a holder new to this
/// delivery (a retry never inherits a token) and kept alive while `work`
/// runs; released afterwards. `Ok(None)` when `turn` says the operation is
/// gone before it got the lease. For jobs that need nothing else of the
/// lease (restores, forges); deploys also watch it for cancels.
pub async fn holding<F, Fut, W, WFut, T>(
    state: &WorkerState,
    app: &str,
    operation: &str,
    id: &str,
    turn: F,
    work: W,
) -> Result<Option<T>, WorkerError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Turn, WorkerError>>,
    W: FnOnce(i64) -> WFut,
    WFut: Future<Output = Result<T, WorkerError>>,
{
    let holder = format!(
        "{}#{}/{operation}:{id}",
        state.token,
        uuid::Uuid::new_v4().simple()
    );
    let Some(token) = acquire(state, app, &holder, operation, turn).await? else {
        return Ok(None);
    };
    let watchers = crate::pipeline::abort::Watchers::spawn(
        &state.pool,
        crate::pipeline::abort::Lease {
            app: app.to_owned(),
            holder: holder.clone(),
            ttl: state.config.lease_ttl,
        },
        None,
    );
    let result = work(token).await;
    drop(watchers);
    let mut conn = state.pool.acquire().await?;
    lease::release(&mut conn, app, &holder).await?;
    result.map(Some)
}
