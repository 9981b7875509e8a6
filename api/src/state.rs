use std::sync::Arc;

use norn_shared::Config;
use sqlx::PgPool;
use tokio::sync::broadcast;

use crate::ingress::RouteTable;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<Config>,
    /// Live events from `LISTEN norn_events`, as JSON text.
    pub events: broadcast::Sender<String>,
    pub routes: RouteTable,
}
