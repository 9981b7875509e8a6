//! App leases: one mutating operation per app at a time, across all workers.
//! The holder token is unique per process and attempt, so a restarted worker
//! never inherits (and never keeps alive) a dead one's lease.

use std::time::Duration;

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

pub const RELEASED_CHANNEL: &str = "norn_lease_released";

fn interval(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Takes the lease if it is free, expired, or already ours. Returns the
/// lease's fencing token: new on every change of holder, kept when the holder
/// already had it.
pub async fn try_acquire(
    pool: &PgPool,
    app: &str,
    holder: &str,
    operation: &str,
    ttl: Duration,
) -> Result<Option<i64>, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO app_leases (app, holder, operation, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))
         ON CONFLICT (app) DO UPDATE
            SET holder = excluded.holder, operation = excluded.operation,
                acquired_at = now(), expires_at = excluded.expires_at,
                token = CASE WHEN app_leases.holder = excluded.holder THEN app_leases.token
                             ELSE nextval('app_lease_tokens') END
            WHERE app_leases.expires_at < now() OR app_leases.holder = excluded.holder
         RETURNING token",
    )
    .bind(app)
    .bind(holder)
    .bind(operation)
    .bind(interval(ttl))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(t,)| t))
}

/// The fence: `true` while the lease of `app` still carries `token`. Holds a
/// share lock on the lease row until the caller's transaction ends, so no
/// other worker can take the lease between this check and the commit.
pub async fn fence(conn: &mut PgConnection, app: &str, token: i64) -> Result<bool, sqlx::Error> {
    let row: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM app_leases WHERE app = $1 AND token = $2 FOR SHARE")
            .bind(app)
            .bind(token)
            .fetch_optional(conn)
            .await?;
    Ok(row.is_some())
}

/// The one way a lease holder writes: a transaction that has passed the
/// [`fence`] for `token`, or `None` when the lease passed to someone else
/// (the caller then writes nothing). Deploys, restores and forges all open
/// their writes here.
pub async fn fenced(
    pool: &PgPool,
    app: &str,
    token: i64,
) -> Result<Option<Transaction<'static, Postgres>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    Ok(if fence(&mut tx, app, token).await? {
        Some(tx)
    } else {
        None
    })
}

/// Who holds the lease of `app` now, if anyone does and it has not expired.
pub async fn live_holder(pool: &PgPool, app: &str) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT holder FROM app_leases WHERE app = $1 AND expires_at > now()")
            .bind(app)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(h,)| h))
}

/// Extends a lease we hold. `false` means we lost it.
pub async fn extend(
    pool: &PgPool,
    app: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let res = sqlx::query(
        "UPDATE app_leases SET expires_at = now() + make_interval(secs => $3)
         WHERE app = $1 AND holder = $2",
    )
    .bind(app)
    .bind(holder)
    .bind(interval(ttl))
    .execute(pool)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Releases a lease we hold and wakes workers waiting for the app.
pub async fn release(conn: &mut PgConnection, app: &str, holder: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM app_leases WHERE app = $1 AND holder = $2")
        .bind(app)
        .bind(holder)
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(RELEASED_CHANNEL)
        .bind(app)
        .execute(conn)
        .await?;
    Ok(())
}
