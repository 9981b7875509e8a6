//! `/ws`: every live event, as `{type, app, payload}` JSON text frames.
//! Clients may filter with `?app=<id>`. A client that falls behind is told so
//! and disconnected rather than silently missing events.
//!
//! The token comes as a subprotocol (`norn.bearer.<token>`, offered beside
//! `norn`, which the server picks), checked by the auth layer like a bearer
//! header. A browser page from another origin is refused by the origin rule
//! every route has (`http_policy`).

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::body::Query;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct WsQuery {
    app: Option<String>,
}

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    Query(q): Query<WsQuery>,
) -> Response {
    let rx = state.events.subscribe();
    ws.protocols([crate::auth::WS_PROTOCOL])
        .on_upgrade(move |socket| pump(socket, rx, q.app))
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
