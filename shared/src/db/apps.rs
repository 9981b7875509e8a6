//! Registered apps. The stored spec is the document as the user wrote it (as
//! JSON); it is re-validated on every read so a stored spec is never trusted
//! blindly across Norn versions.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use sqlx::types::Json;

use crate::infraspec::{InfraSpec, SpecErrors};

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: String,
    spec: Json<serde_json::Value>,
    source: String,
    source_dir: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub id: String,
    pub spec: InfraSpec,
    pub source: String,
    /// For apps found under `NORN_APPS_DIR`: their directory, deployed when there is no repo.
    pub source_dir: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("stored spec of app {app} no longer validates: {errors}")]
    Invalid { app: String, errors: SpecErrors },
}

impl App {
    fn with_spec(row: Row, spec: InfraSpec) -> Self {
        App {
            id: row.id,
            spec,
            source: row.source,
            source_dir: row.source_dir,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

impl TryFrom<Row> for App {
    type Error = AppError;
    fn try_from(row: Row) -> Result<Self, AppError> {
        match InfraSpec::from_json(row.spec.0.clone()) {
            Ok(spec) => Ok(App::with_spec(row, spec)),
            Err(errors) => Err(AppError::Invalid {
                app: row.id,
                errors,
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("database {database} belongs to app {owner}; each app has a database of its own")]
    DatabaseTaken { database: String, owner: String },
    #[error(
        "key-value namespace {namespace} belongs to app {owner}; each app has a namespace of its own"
    )]
    NamespaceTaken { namespace: String, owner: String },
    #[error("hostname {hostname} belongs to app {owner}; each hostname routes to one app")]
    HostnameTaken { hostname: String, owner: String },
}

/// Registers or replaces an app and claims its database, in one
/// transaction: a spec naming another app's database changes nothing.
/// Returns `true` when the app was new.
pub async fn register(
    conn: &mut PgConnection,
    spec: &InfraSpec,
    document: &serde_json::Value,
    source: &str,
    source_dir: Option<&str>,
) -> Result<bool, RegisterError> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    let database = spec.services.postgres.as_ref().map(|p| p.database.as_str());
    if let Some(owner) = claim(&mut tx, Claim::DATABASE, spec.name.as_str(), database).await? {
        return Err(RegisterError::DatabaseTaken {
            database: database.unwrap_or_default().to_owned(),
            owner,
        });
    }
    let namespace = spec.services.kv.as_ref().map(|k| k.namespace.as_str());
    if let Some(owner) = claim(&mut tx, Claim::KV_NAMESPACE, spec.name.as_str(), namespace).await? {
        return Err(RegisterError::NamespaceTaken {
            namespace: namespace.unwrap_or_default().to_owned(),
            owner,
        });
    }
    let hostnames: Vec<String> = spec.endpoints.iter().map(|e| e.hostname.clone()).collect();
    let taken = super::routes::claim_hostnames(&mut tx, spec.name.as_str(), &hostnames).await?;
    if let Some((hostname, owner)) = taken {
        return Err(RegisterError::HostnameTaken { hostname, owner });
    }
    let created = upsert(&mut tx, spec, document, source, source_dir).await?;
    tx.commit().await?;
    Ok(created)
}

/// Registers or replaces an app. Returns `true` when it was new.
pub async fn upsert(
    conn: &mut PgConnection,
    spec: &InfraSpec,
    document: &serde_json::Value,
    source: &str,
    source_dir: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let (created,): (bool,) = sqlx::query_as(
        "INSERT INTO apps (id, spec, source, source_dir) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, source = excluded.source,
                                        source_dir = excluded.source_dir, updated_at = now(),
                                        spec_error = NULL, spec_error_at = NULL
         RETURNING (xmax = 0)",
    )
    .bind(spec.name.as_str())
    .bind(Json(document))
    .bind(source)
    .bind(source_dir)
    .fetch_one(conn)
    .await?;
    Ok(created)
}

pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<App>, AppError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, spec, source, source_dir, created_at, updated_at FROM apps WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(App::try_from).transpose()
}

/// The app's spec document as registered (what the user wrote, as JSON).
pub async fn document(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let row: Option<(Json<serde_json::Value>,)> =
        sqlx::query_as("SELECT spec FROM apps WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(Json(v),)| v))
}

/// Forgets an app: its row, its forge state and its claims on a database,
/// a key-value namespace and hostnames. Only a preview's teardown removes
/// an app, once its containers, routes and services are gone.
pub async fn remove(conn: &mut PgConnection, id: &str) -> Result<(), sqlx::Error> {
    claim(conn, Claim::DATABASE, id, None).await?;
    claim(conn, Claim::KV_NAMESPACE, id, None).await?;
    super::routes::claim_hostnames(conn, id, &[]).await?;
    sqlx::query("DELETE FROM forge_states WHERE app = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM apps WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks the app's row for the rest of the caller's transaction, so deploys
/// of one app are queued one at a time (supersede and the queue limit need a
/// stable view). `false` when the app is not registered.
pub async fn lock(conn: &mut PgConnection, id: &str) -> Result<bool, AppError> {
    let row: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM apps WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

/// A registered app whose stored spec no longer validates.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvalidApp {
    pub id: String,
    pub error: String,
    pub source: String,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Always `false`: what tells it from a valid app in a list.
    pub valid: bool,
}

/// One entry of `GET /api/apps`: an app, or one whose stored spec no
/// longer validates (register it again).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Listed {
    Invalid(InvalidApp),
    Valid(Box<App>),
}

/// What `POST /api/apps` answers: the app as validated.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    pub id: String,
    /// False when it replaced the app's earlier spec.
    pub created: bool,
    pub spec: InfraSpec,
}

/// What `GET /api/apps/{id}` answers.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppDetail {
    pub app: App,
    /// The deployment serving now.
    pub current: Option<super::deployments::Deployment>,
    pub routes: Vec<super::routes::Route>,
    /// The newest ten, without step output.
    pub deployments: Vec<super::deployments::Deployment>,
}

/// Every app, each either valid or listed with its validation error: one
/// app's stale spec never hides the others.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<Result<App, InvalidApp>>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, spec, source, source_dir, created_at, updated_at FROM apps ORDER BY id",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let invalid = |errors: SpecErrors, row: &Row| InvalidApp {
                id: row.id.clone(),
                error: errors.to_string(),
                source: row.source.clone(),
                updated_at: row.updated_at,
                valid: false,
            };
            match InfraSpec::from_json(row.spec.0.clone()) {
                Ok(spec) => Ok(App::with_spec(row, spec)),
                Err(errors) => Err(invalid(errors, &row)),
            }
        })
        .collect())
}

/// Records that `app`'s stored spec does not validate. `true` the first
/// time this error is recorded (so the caller reports it once, not on every
/// pass).
pub async fn record_spec_error(
    conn: &mut PgConnection,
    app: &str,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE apps SET spec_error = $2, spec_error_at = now()
         WHERE id = $1 AND spec_error IS DISTINCT FROM $2",
    )
    .bind(app)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() > 0)
}

/// A name only one app may hold: its table and the column the name is in.
pub struct Claim {
    table: &'static str,
    column: &'static str,
}

impl Claim {
    pub const DATABASE: Self = Self {
        table: "app_databases",
        column: "database",
    };
    pub const KV_NAMESPACE: Self = Self {
        table: "app_kv_namespaces",
        column: "namespace",
    };
}

/// Claims `name` for `app` (one app per name), dropping the app's claim on
/// any other name of that kind. Returns the app that owns the name when it
/// is another one; the caller must then roll its transaction back.
pub async fn claim(
    conn: &mut PgConnection,
    kind: Claim,
    app: &str,
    name: Option<&str>,
) -> Result<Option<String>, sqlx::Error> {
    let Claim { table, column } = kind;
    // Table and column are the constants above, never input.
    let sql = |s: String| sqlx::AssertSqlSafe(s);
    if let Some(name) = name {
        let owner: Option<(String,)> = sqlx::query_as(sql(format!(
            "SELECT app FROM {table} WHERE {column} = $1 FOR UPDATE"
        )))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((owner,)) = owner.filter(|(o,)| o != app) {
            return Ok(Some(owner));
        }
    }
    sqlx::query(sql(format!(
        "DELETE FROM {table} WHERE app = $1 AND {column} IS DISTINCT FROM $2"
    )))
    .bind(app)
    .bind(name)
    .execute(&mut *conn)
    .await?;
    if let Some(name) = name {
        // A concurrent claim of the same name waits on the primary key and
        // then conflicts: the loser reads the winner as the owner.
        let inserted = sqlx::query(sql(format!(
            "INSERT INTO {table} ({column}, app) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        )))
        .bind(name)
        .bind(app)
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() == 0 {
            let (owner,): (String,) =
                sqlx::query_as(sql(format!("SELECT app FROM {table} WHERE {column} = $1")))
                    .bind(name)
                    .fetch_one(&mut *conn)
                    .await?;
            if owner != app {
                return Ok(Some(owner));
            }
        }
    }
    Ok(None)
}
