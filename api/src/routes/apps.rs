use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use norn_shared::db::apps::{AppDetail, Listed, Registered};
use norn_shared::db::{apps, deployments, routes};
use norn_shared::domain::AppName;
use norn_shared::infraspec::document::Format;
use norn_shared::infraspec::{InfraSpec, SpecErrors};
use serde_json::Value;

use crate::body::{Body, SPEC_LIMIT};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Parses an app id from the path, or 400.
pub fn app_id(raw: &str) -> ApiResult<AppName> {
    AppName::parse(raw).map_err(|e| ApiError::field("id", format!("invalid app id: {e}")))
}

fn spec_error(errors: SpecErrors) -> ApiError {
    let first = errors.first().clone();
    let message = if first.field.is_empty() {
        first.message
    } else {
        format!("{}: {}", first.field, first.message)
    };
    ApiError::BadRequest {
        message,
        field: (!first.field.is_empty()).then_some(first.field),
    }
}

/// Decodes a spec sent as JSON or YAML into the stored document and the typed
/// spec. Decoding is bounded (see `infraspec::document`) but CPU-bound, so it
/// runs on the blocking pool: a hostile spec never stalls the threads that
/// serve the API and the ingress.
pub async fn decode(headers: &HeaderMap, body: Bytes) -> ApiResult<(Value, InfraSpec)> {
    let format = if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
    {
        Format::Json
    } else {
        Format::Yaml
    };
    tokio::task::spawn_blocking(move || {
        let text =
            std::str::from_utf8(&body).map_err(|_| ApiError::bad("the body must be UTF-8 text"))?;
        InfraSpec::decode(text, format).map_err(spec_error)
    })
    .await?
}

#[utoipa::path(
    post,
    path = "/api/apps",
    tag = "apps",
    summary = "Register or replace an app from its infraspec (YAML or JSON)",
    request_body(content(
        (norn_shared::infraspec::raw::RawSpec = "application/json"),
        (String = "application/yaml"),
    )),
    responses(
        (status = 201, body = Registered, description = "registered"),
        (status = 200, body = Registered, description = "its spec replaced"),
        crate::openapi::Errors,
    ),
    security(("bearer" = ["admin"])),
)]
pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body<SPEC_LIMIT>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    let (document, spec) = decode(&headers, body).await?;
    refuse_reserved_database(&state.config, &spec)?;
    if let Some(why) = spec
        .repo
        .as_ref()
        .and_then(|r| state.config.git_policy.refuse(&r.url))
    {
        return Err(ApiError::field("repo.url", why));
    }
    let mut conn = state.pool.acquire().await?;
    let created = apps::register(&mut conn, &spec, &document, "api", None)
        .await
        .map_err(register_error)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Registered {
            id: spec.name.to_string(),
            created,
            spec,
        }),
    ))
}

const DATABASE_FIELD: &str = "services.postgres.database";

fn register_error(e: apps::RegisterError) -> ApiError {
    match e {
        apps::RegisterError::DatabaseTaken { .. } => ApiError::ConflictOn {
            message: e.to_string(),
            field: DATABASE_FIELD.into(),
        },
        apps::RegisterError::NamespaceTaken { .. } => ApiError::ConflictOn {
            message: e.to_string(),
            field: "services.kv.namespace".into(),
        },
        apps::RegisterError::HostnameTaken { .. } => ApiError::ConflictOn {
            message: e.to_string(),
            field: "endpoints".into(),
        },
        apps::RegisterError::Db(e) => e.into(),
    }
}

/// Norn's own databases can never be an app's (the infraspec already
/// refuses `postgres` and the templates).
fn refuse_reserved_database(config: &norn_shared::Config, spec: &InfraSpec) -> ApiResult<()> {
    let Some(pg) = &spec.services.postgres else {
        return Ok(());
    };
    let own = [&config.database_url, &config.app_database_url]
        .into_iter()
        .flatten()
        .filter_map(|url| {
            url.expose()
                .parse::<sqlx::postgres::PgConnectOptions>()
                .ok()
                .and_then(|o| o.get_database().map(str::to_owned))
        });
    for name in own {
        if name == pg.database {
            return Err(ApiError::field(
                DATABASE_FIELD,
                format!("{name} is Norn's own database and cannot be an app's"),
            ));
        }
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/api/apps",
    tag = "apps",
    summary = "Registered apps with their validated specs",
    responses((status = 200, body = Vec<Listed>), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<Listed>>> {
    let mut conn = state.pool.acquire().await?;
    // An app whose stored spec no longer validates is listed with its error
    // (`valid: false`) instead of failing the whole list.
    let list = apps::list(&mut conn)
        .await?
        .into_iter()
        .map(|listed| match listed {
            Ok(app) => Listed::Valid(Box::new(app)),
            Err(invalid) => Listed::Invalid(invalid),
        })
        .collect();
    Ok(Json(list))
}

/// A stored spec that no longer validates is the user's to fix (register it
/// again), not a server fault.
pub fn invalid_spec(e: apps::AppError) -> ApiError {
    match e {
        apps::AppError::Invalid { .. } => {
            ApiError::Conflict(format!("{e}; register the app again with a valid spec"))
        }
        apps::AppError::Db(e) => e.into(),
    }
}

#[utoipa::path(
    get,
    path = "/api/apps/{id}",
    tag = "apps",
    summary = "One app",
    params(("id" = String, Path, description = "app name")),
    responses((status = 200, body = AppDetail), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<AppDetail>> {
    let id = app_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    let app = apps::get(&mut conn, id.as_str())
        .await
        .map_err(invalid_spec)?
        .ok_or_else(|| ApiError::NotFound(format!("app {id} is not registered")))?;
    let recent = deployments::list(
        &mut conn,
        &deployments::ListFilter {
            app: Some(id.as_str()),
            limit: 10,
            ..Default::default()
        },
    )
    .await?;
    let current = deployments::current(&mut conn, id.as_str()).await?;
    let routes = routes::for_app(&mut conn, id.as_str()).await?;
    Ok(Json(AppDetail {
        app,
        current,
        routes,
        deployments: recent,
    }))
}

/// Registers every `<dir>/*/infraspec.yaml`. A broken spec is logged and
/// skipped so one bad app never keeps the API from starting.
pub async fn register_dir(
    pool: &sqlx::PgPool,
    dir: &std::path::Path,
) -> Result<usize, sqlx::Error> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::info!(dir = %dir.display(), "apps directory not found; nothing to register");
        return Ok(0);
    };
    let mut count = 0;
    for entry in entries.flatten() {
        let path = entry.path().join("infraspec.yaml");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let parsed = InfraSpec::decode(&text, Format::Yaml);
        match parsed {
            Ok((doc, spec)) => {
                let dir = entry.path().canonicalize().unwrap_or(entry.path());
                let mut conn = pool.acquire().await?;
                match apps::register(&mut conn, &spec, &doc, "apps_dir", dir.to_str()).await {
                    Ok(_) => count += 1,
                    Err(apps::RegisterError::Db(e)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "skipping app")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping app with an invalid infraspec")
            }
        }
    }
    Ok(count)
}
