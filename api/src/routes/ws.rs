//! `/ws`: every live event, as `{type, app, payload}` JSON text frames.
//! Clients may filter with `?app=<id>`. A client that falls behind is told so
//! and disconnected rather than silently missing events.
//!
//! The token comes as a subprotocol (`norn.bearer.<token>`, offered beside
//! `norn`, which the server picks), checked by the auth layer like a bearer
//! header. A browser page from another origin is refused by the origin rule
//! every route has (`http_policy`).

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use norn_shared::events::{Event, EventBody, Lagged};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::body::Query;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WsQuery {
    app: Option<String>,
}

#[utoipa::path(
    get,
    path = "/ws",
    tag = "events",
    summary = "Live events (WebSocket)",
    params(WsQuery),
    responses((status = 101, description = "switching to the WebSocket protocol"), crate::openapi::Errors),
    security(("bearer" = ["viewer"])),
)]
pub async fn upgrade(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    State(state): State<AppState>,
    Query(q): Query<WsQuery>,
) -> Result<Response, ApiError> {
    // A plain request here gets the JSON error every route gives.
    let ws =
        ws.map_err(|e| ApiError::bad(format!("/ws needs a WebSocket upgrade: {}", e.body_text())))?;
    let rx = state.events.subscribe();
    Ok(ws
        .protocols([crate::auth::WS_PROTOCOL])
        .on_upgrade(move |socket| pump(socket, rx, q.app)))
}

/// The one field `?app=` filters on.
#[derive(serde::Deserialize)]
struct Whose {
    app: String,
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
                    // Only the app is read: the text goes on as the writer sent it.
                    if let Some(app) = &app {
                        let matches = serde_json::from_str::<Whose>(&text)
                            .map(|e| &e.app == app)
                            .unwrap_or(false);
                        if !matches { continue; }
                    }
                    if socket.send(Message::Text(text.into())).await.is_err() { return; }
                }
                Err(RecvError::Lagged(n)) => {
                    let lagged = Event::new("", EventBody::StreamLagged(Lagged { missed: n }));
                    if let Ok(text) = serde_json::to_string(&lagged) {
                        let _ = socket.send(Message::Text(text.into())).await;
                    }
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
