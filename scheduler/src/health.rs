//! Enqueues one health job per probe-able app every interval. The job key
//! carries the interval slot, so a leader change inside a slot does not probe twice.

use std::time::Duration;

use norn_shared::db::{apps, routes};
use norn_shared::jobs::HealthJob;
use norn_shared::queue::{self, Enqueued, Queue};
use sqlx::PgPool;

use crate::SchedulerError;

/// Returns how many checks were enqueued.
pub async fn enqueue_checks(pool: &PgPool, interval: Duration) -> Result<usize, SchedulerError> {
    let mut tx = pool.begin().await?;
    let routed = routes::all(&mut tx).await?;
    let mut apps_to_check: Vec<String> = Vec::new();
    for listed in apps::list(&mut tx).await? {
        let app = match listed {
            Ok(app) => app,
            Err(invalid) => {
                crate::incidents::invalid_spec(&mut tx, &invalid.id, &invalid.error).await?;
                continue;
            }
        };
        let probed = routed.iter().any(|r| {
            r.app == app.id
                && app
                    .spec
                    .processes
                    .get(&r.process)
                    .is_some_and(|p| p.health.is_some())
        });
        if probed {
            apps_to_check.push(app.id);
        }
    }
    let slot = chrono::Utc::now().timestamp() / interval.as_secs().max(1) as i64;
    let mut pushed = 0;
    for app in apps_to_check {
        let key = format!("health:{app}:{slot}");
        if queue::enqueue(&mut tx, Queue::Health, &HealthJob { app }, Some(&key)).await?
            == Enqueued::Pushed
        {
            pushed += 1;
        }
    }
    tx.commit().await?;
    Ok(pushed)
}
