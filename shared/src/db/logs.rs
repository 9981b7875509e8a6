//! `step_logs`: the full output of deploy steps, appended in chunks while a
//! step runs and read back (or followed) by the logs route.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

/// One stored chunk.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Chunk {
    pub id: i64,
    pub step: String,
    pub attempt: i32,
    pub chunk: String,
}

/// Appends a chunk (NUL replaced: Postgres refuses it in TEXT).
pub async fn append(
    pool: &PgPool,
    deployment_id: &str,
    step: &str,
    attempt: i32,
    chunk: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO step_logs (deployment_id, step, attempt, chunk) VALUES ($1, $2, $3, $4)",
    )
    .bind(deployment_id)
    .bind(step)
    .bind(attempt)
    .bind(crate::text::storable(chunk).as_ref())
    .execute(pool)
    .await?;
    Ok(())
}

/// Chunks after `after` (an id from an earlier read; 0 for the start), in
/// the order they were written, at most `limit`.
pub async fn read(
    conn: &mut PgConnection,
    deployment_id: &str,
    step: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<Vec<Chunk>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, step, attempt, chunk FROM step_logs
         WHERE deployment_id = $1 AND ($2::text IS NULL OR step = $2) AND id > $3
         ORDER BY id LIMIT $4",
    )
    .bind(deployment_id)
    .bind(step)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Deletes chunks older than `retention`, in batches; returns how many.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM step_logs WHERE id IN (
                 SELECT id FROM step_logs WHERE created_at < now() - make_interval(secs => $1)
                 ORDER BY created_at LIMIT 1000)",
        )
        .bind(retention.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < 1000 {
            return Ok(total);
        }
    }
}
