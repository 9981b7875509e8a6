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

/// How often the route table is reloaded even without a NOTIFY.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

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
    // A reload on a timer, whatever the event traffic: a lost NOTIFY is
    // repaired within RELOAD_EVERY even while events keep arriving (a
    // timeout on the next event never fired under steady traffic).
    let mut reload = tokio::time::interval(RELOAD_EVERY);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = reload.tick() => table.reload(pool).await?,
            received = listener.try_recv() => match received {
                Ok(Some(n)) if n.channel() == routes::CHANGED_CHANNEL => table.reload(pool).await?,
                Ok(Some(n)) => {
                    let _ = events_tx.send(n.payload().to_owned());
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            },
        }
    }
}
