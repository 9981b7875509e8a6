//! Cross-process locks for resources that live outside Postgres (a Docker
//! network on one engine), taken through the database every role shares.

use sqlx::{PgPool, Postgres, Transaction};

/// Takes a transaction-scoped advisory lock on `key` and returns its
/// transaction: the lock is held until the transaction is dropped (rolled
/// back) or committed, and released by Postgres if this process dies.
pub async fn exclusive(
    pool: &PgPool,
    key: &str,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}
