use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use norn_shared::health::{
    Dependencies, Dependency, FailingEngine, HealthReport, Overall, ServiceStatus,
};

use crate::state::AppState;

/// How long one probe of Norn's database may take.
const PROBE: std::time::Duration = std::time::Duration::from_secs(3);

/// Postgres, the workers' container engines and queue depth. 503 when
/// Postgres is down, so load balancers take this replica out. The API holds
/// no Docker socket: the engine's state is what live workers reported in
/// their last heartbeat. Without the token (when one is set) the answer is
/// only `ok` or `degraded`.
#[utoipa::path(
    get,
    path = "/api/health",
    tag = "health",
    summary = "Liveness and dependencies; details only with a token",
    responses(
        (status = 200, body = HealthReport),
        (status = 503, body = HealthReport, description = "Postgres is down"),
    ),
    security(()),
)]
pub async fn health(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> (StatusCode, Json<HealthReport>) {
    // Bounded, and nothing else asks the database once it is down: a probe
    // must answer within the load balancer's patience, not after one pool
    // timeout per query.
    let pg_up = matches!(
        tokio::time::timeout(PROBE, sqlx::query("SELECT 1").execute(&state.pool)).await,
        Ok(Ok(_))
    );
    let engines = if pg_up {
        norn_shared::db::nodes::engine_states(&state.pool)
            .await
            .map_err(|e| e.to_string())
    } else {
        Err("Postgres is down".to_owned())
    };
    let docker = match &engines {
        Err(_) => Dependency::new(ServiceStatus::Unknown),
        Ok(rows) if rows.is_empty() => Dependency::explained(
            ServiceStatus::Down,
            "no live worker reports a container engine",
        ),
        Ok(rows) => {
            let failing: Vec<FailingEngine> = rows
                .iter()
                .filter(|(_, ok, _)| !ok)
                .map(|(node, _, e)| FailingEngine {
                    node: node.clone(),
                    error: e.clone(),
                })
                .collect();
            let status = if failing.is_empty() {
                ServiceStatus::Up
            } else {
                ServiceStatus::Down
            };
            Dependency {
                workers: Some(rows.len()),
                failing,
                ..Dependency::new(status)
            }
        }
    };
    let ok = pg_up && docker.status == ServiceStatus::Up;
    let code = if pg_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if ok { Overall::Ok } else { Overall::Degraded };
    // Details for any valid token (a named one needs the database, which
    // may be what is down: the bootstrap token never does).
    let known = tokio::time::timeout(PROBE, crate::auth::principal(&state, &headers))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .is_some();
    if !known {
        let report = HealthReport {
            status,
            services: None,
            queues: None,
        };
        return (code, Json(report));
    }
    let queues = if pg_up {
        norn_shared::queue::depth(&state.pool)
            .await
            .map(|rows| rows.into_iter().collect())
            .unwrap_or_default()
    } else {
        Default::default()
    };
    let postgres = if pg_up {
        Dependency::new(ServiceStatus::Up)
    } else {
        Dependency::down(format!("no answer to SELECT 1 within {PROBE:?}"))
    };
    let report = HealthReport {
        status,
        services: Some(Dependencies {
            postgres,
            docker,
            app_databases: app_databases(&state).await,
            kv: kv(&state).await,
            events: events(&state).await,
        }),
        queues: Some(queues),
    };
    (code, Json(report))
}

/// The key-value server (`NORN_KV_URL`), as Norn's admin user.
async fn kv(state: &AppState) -> Dependency {
    let Some(url) = &state.config.kv_url else {
        return Dependency::explained(ServiceStatus::NotConfigured, "NORN_KV_URL is not set");
    };
    match norn_shared::kv::ping(url.expose()).await {
        Ok(()) => Dependency::new(ServiceStatus::Up),
        Err(e) => Dependency::down(e.to_string()),
    }
}

/// The Kafka-protocol brokers (`NORN_EVENTS_BROKERS`): they answer a
/// metadata request.
async fn events(state: &AppState) -> Dependency {
    let Some(brokers) = &state.config.events_brokers else {
        return Dependency::explained(
            ServiceStatus::NotConfigured,
            "NORN_EVENTS_BROKERS is not set",
        );
    };
    match norn_shared::brokers::ping(brokers).await {
        Ok(()) => Dependency::new(ServiceStatus::Up),
        Err(e) => Dependency::down(e.to_string()),
    }
}

/// The server app databases live on (`NORN_APP_DATABASE_URL`), as the
/// provisioning role: a forge needs it. Checked only for callers with the
/// token, with a short timeout.
async fn app_databases(state: &AppState) -> Dependency {
    use sqlx::Connection;
    let Some(url) = state
        .config
        .app_database_url
        .as_ref()
        .or(state.config.database_url.as_ref())
    else {
        return Dependency::new(ServiceStatus::NotConfigured);
    };
    let check = async {
        let mut conn = sqlx::PgConnection::connect(url.expose()).await?;
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        conn.close().await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), check).await {
        Ok(Ok(())) => Dependency::new(ServiceStatus::Up),
        Ok(Err(e)) => Dependency::down(e.to_string()),
        Err(_) => Dependency::down("no answer within 3 s"),
    }
}
