//! Credentials Norn made for an app's services. Only the sealed form is
//! stored (`crypto::SecretKey::seal`); opening it needs the key, which never
//! reaches the database.

use sqlx::PgConnection;

use crate::crypto::Sealed;

#[derive(Debug, Clone)]
pub struct Credential {
    pub username: String,
    pub sealed: Sealed,
}

pub async fn get(
    conn: &mut PgConnection,
    app: &str,
    service: &str,
) -> Result<Option<Credential>, sqlx::Error> {
    let row: Option<(String, String, String)> = sqlx::query_as(
        "SELECT username, sealed, key_id FROM service_credentials WHERE app = $1 AND service = $2",
    )
    .bind(app)
    .bind(service)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(username, data, key_id)| Credential {
        username,
        sealed: Sealed { key_id, data },
    }))
}

pub async fn put(
    conn: &mut PgConnection,
    app: &str,
    service: &str,
    credential: &Credential,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO service_credentials (app, service, username, sealed, key_id)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (app, service) DO UPDATE
            SET username = excluded.username, sealed = excluded.sealed,
                key_id = excluded.key_id, updated_at = now()",
    )
    .bind(app)
    .bind(service)
    .bind(&credential.username)
    .bind(&credential.sealed.data)
    .bind(&credential.sealed.key_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete(conn: &mut PgConnection, app: &str, service: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM service_credentials WHERE app = $1 AND service = $2")
        .bind(app)
        .bind(service)
        .execute(conn)
        .await?;
    Ok(())
}
