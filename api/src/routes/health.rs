use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

/// Postgres, the Docker engine and queue depth. 503 when a dependency is down,
/// so load balancers take this replica out.
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let postgres = sqlx::query("SELECT 1").execute(&state.pool).await;
    let depth = norn_shared::queue::depth(&state.pool).await;
    let docker = match &state.docker {
        Some(d) => d.ping().await.map(|_| ()).map_err(|e| e.to_string()),
        None => Err("not connected".to_owned()),
    };
    let queues: serde_json::Map<String, Value> = depth
        .as_ref()
        .map(|rows| rows.iter().map(|(q, n)| (q.clone(), json!(n))).collect())
        .unwrap_or_default();
    let pg_up = postgres.is_ok();
    let body = json!({
        "status": if pg_up && docker.is_ok() { "ok" } else { "degraded" },
        "services": {
            "postgres": if pg_up { json!({"status": "up"}) } else { json!({"status": "down"}) },
            "docker": match &docker { Ok(()) => json!({"status": "up"}), Err(e) => json!({"status": "down", "details": e}) },
        },
        "queues": queues,
    });
    let code = if pg_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
