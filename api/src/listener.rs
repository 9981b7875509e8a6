//! One LISTEN connection per api replica: live events fan out to `/ws`
//! clients, route changes reload the ingress table. Reconnects on its own;
//! after a reconnect the route table is reloaded since NOTIFYs sent while
//! disconnected are gone.

use std::time::Duration;

use norn_shared::db::routes;
use norn_shared::events;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use crate::ingress::RouteTable;

pub async fn run(pool: sqlx::PgPool, events_tx: broadcast::Sender<String>, table: RouteTable) {
    loop {
        if let Err(e) = session(&pool, &events_tx, &table).await {
            tracing::warn!(error = %e, "event listener lost its connection; reconnecting");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn session(
    pool: &sqlx::PgPool,
    events_tx: &broadcast::Sender<String>,
    table: &RouteTable,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([events::CHANNEL, routes::CHANGED_CHANNEL])
        .await?;
    table.reload(pool).await?;
    loop {
        // A timed wake-up reloads routes even if a NOTIFY was lost.
        match tokio::time::timeout(Duration::from_secs(10), listener.try_recv()).await {
            Err(_) => table.reload(pool).await?,
            Ok(Ok(Some(n))) if n.channel() == routes::CHANGED_CHANNEL => table.reload(pool).await?,
            Ok(Ok(Some(n))) => {
                let _ = events_tx.send(n.payload().to_owned());
            }
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
        }
    }
}
