//! Test support: a fresh, migrated database per test on a real Postgres.
//! `NORN_TEST_DATABASE_URL` points at a server where the test user may create
//! databases (`.ci/run` starts one).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use sqlx::{Connection, PgConnection, PgPool};

fn admin_url() -> String {
    std::env::var("NORN_TEST_DATABASE_URL")
        .expect("NORN_TEST_DATABASE_URL must point at a Postgres server (bash .ci/run starts one)")
}

pub use crate::db::with_database;

fn template_name() -> String {
    let mut h = DefaultHasher::new();
    for m in sqlx::migrate!("../migrations").iter() {
        m.checksum.hash(&mut h);
    }
    format!("norn_template_{:x}", h.finish())
}

/// Creates a database from a migrated template and returns its URL.
pub async fn fresh_database() -> String {
    let admin = admin_url();
    let template = template_name();
    let mut conn = PgConnection::connect(&admin)
        .await
        .expect("connect to test server");
    sqlx::query("SELECT pg_advisory_lock(7316)")
        .execute(&mut conn)
        .await
        .expect("lock");
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&template)
        .fetch_optional(&mut conn)
        .await
        .expect("query templates");
    if exists.is_none() {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {template}")))
            .execute(&mut conn)
            .await
            .expect("create template");
        let pool = PgPool::connect(&with_database(&admin, &template))
            .await
            .expect("connect template");
        crate::db::migrate(&pool).await.expect("migrate template");
        pool.close().await;
    }
    let name = format!("norn_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {template}"
    )))
    .execute(&mut conn)
    .await
    .expect("create test database");
    sqlx::query("SELECT pg_advisory_unlock(7316)")
        .execute(&mut conn)
        .await
        .expect("unlock");
    with_database(&admin, &name)
}

/// A pool on a fresh database.
pub async fn fresh_pool() -> (PgPool, String) {
    let url = fresh_database().await;
    let pool = crate::db::connect(&url, 10).await.expect("connect test db");
    (pool, url)
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_database() {
        use super::with_database;
        assert_eq!(
            with_database("postgres://u@h:5/db?sslmode=disable", "x"),
            "postgres://u@h:5/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
    }
}
