//! `/ws`: every live event, as `{type, app, payload}` JSON text frames.
//! Clients may filter with `?app=<id>`. A client that falls behind is told so
//! and disconnected rather than silently missing events.
//!
//! The token comes as a subprotocol (`norn.bearer.<token>`, offered beside
//! `norn`, which the server picks), checked by the auth layer like a bearer
//! header. A browser page from another origin is refused: a page a user
//! visits must not read their events with their token (the `Origin` must be
//! this host or one of `NORN_ALLOWED_ORIGINS`).

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::body::Query;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct WsQuery {
    app: Option<String>,
}

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
) -> Result<Response, ApiError> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if !origin_allowed(origin, &headers, &state.config.allowed_origins) {
            return Err(ApiError::Forbidden(format!(
                "origin {origin} may not open /ws (NORN_ALLOWED_ORIGINS)"
            )));
        }
    }
    let rx = state.events.subscribe();
    Ok(ws
        .protocols([crate::auth::WS_PROTOCOL])
        .on_upgrade(move |socket| pump(socket, rx, q.app)))
}

/// The page's origin is this host (same origin), or listed.
fn origin_allowed(origin: &str, headers: &HeaderMap, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or_default();
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

async fn pump(
    mut socket: WebSocket,
    mut rx: tokio::sync::broadcast::Receiver<String>,
    app: Option<String>,
) {
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Ok(text) => {
                    if let Some(app) = &app {
                        let matches = serde_json::from_str::<norn_shared::events::Event>(&text)
                            .map(|e| &e.app == app)
                            .unwrap_or(false);
                        if !matches { continue; }
                    }
                    if socket.send(Message::Text(text.into())).await.is_err() { return; }
                }
                Err(RecvError::Lagged(n)) => {
                    let _ = socket.send(Message::Text(format!(r#"{{"type":"stream.lagged","app":"","payload":{{"missed":{n}}}}}"#).into())).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
        }
    }
}
