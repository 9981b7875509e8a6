use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

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
    responses((status = 200, body = serde_json::Value), crate::openapi::Errors),
    security(()),
)]
pub async fn health(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
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
        Err(_) => json!({"status": "unknown"}),
        Ok(rows) if rows.is_empty() => {
            json!({"status": "down", "details": "no live worker reports a container engine"})
        }
        Ok(rows) => {
            let down: Vec<Value> = rows
                .iter()
                .filter(|(_, ok, _)| !ok)
                .map(|(node, _, e)| json!({"node": node, "error": e}))
                .collect();
            if down.is_empty() {
                json!({"status": "up", "workers": rows.len()})
            } else {
                json!({"status": "down", "workers": rows.len(), "failing": down})
            }
        }
    };
    let ok = pg_up && docker["status"] == "up";
    let code = if pg_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if ok { "ok" } else { "degraded" };
    // Details for any valid token (a named one needs the database, which
    // may be what is down: the bootstrap token never does).
    let known = tokio::time::timeout(PROBE, crate::auth::principal(&state, &headers))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .is_some();
    if !known {
        return (code, Json(json!({ "status": status })));
    }
    let queues: serde_json::Map<String, Value> = if pg_up {
        norn_shared::queue::depth(&state.pool)
            .await
            .map(|rows| rows.into_iter().map(|(q, n)| (q, json!(n))).collect())
            .unwrap_or_default()
    } else {
        serde_json::Map::new()
    };
    let body = json!({
        "status": status,
        "services": {
            "postgres": json!({"status": if pg_up { "up" } else { "down" }}),
            "docker": docker,
            "appDatabases": app_databases(&state).await,
            "kv": kv(&state).await,
            "events": events(&state).await,
        },
        "queues": queues,
    });
    (code, Json(body))
}

/// The key-value server (`NORN_KV_URL`), as Norn's admin user.
async fn kv(state: &AppState) -> Value {
    let Some(url) = &state.config.kv_url else {
        return json!({"status": "not_configured", "details": "NORN_KV_URL is not set"});
    };
    match norn_shared::kv::ping(url.expose()).await {
        Ok(()) => json!({"status": "up"}),
        Err(e) => json!({"status": "down", "error": e.to_string()}),
    }
}

/// The Kafka-protocol brokers (`NORN_EVENTS_BROKERS`): they answer a
/// metadata request.
async fn events(state: &AppState) -> Value {
    let Some(brokers) = &state.config.events_brokers else {
        return json!({"status": "not_configured", "details": "NORN_EVENTS_BROKERS is not set"});
    };
    match norn_shared::brokers::ping(brokers).await {
        Ok(()) => json!({"status": "up"}),
        Err(e) => json!({"status": "down", "error": e.to_string()}),
    }
}

/// The server app databases live on (`NORN_APP_DATABASE_URL`), as the
/// provisioning role: a forge needs it. Checked only for callers with the
/// token, with a short timeout.
async fn app_databases(state: &AppState) -> Value {
    use sqlx::Connection;
    let Some(url) = state
        .config
        .app_database_url
        .as_ref()
        .or(state.config.database_url.as_ref())
    else {
        return json!({"status": "not_configured"});
    };
    let check = async {
        let mut conn = sqlx::PgConnection::connect(url.expose()).await?;
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        conn.close().await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), check).await {
        Ok(Ok(())) => json!({"status": "up"}),
        Ok(Err(e)) => json!({"status": "down", "error": e.to_string()}),
        Err(_) => json!({"status": "down", "error": "no answer within 3 s"}),
    }
}
