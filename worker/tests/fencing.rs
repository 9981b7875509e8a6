//! Fencing against a real Postgres: a worker whose app lease passed to
//! another one (it was paused or partitioned past the TTL) writes nothing.

use std::time::Duration;

use norn_shared::db::deployments::{self, NewDeployment};
use norn_shared::db::lease;
use norn_shared::domain::Step;
use norn_worker::WorkerError;
use norn_worker::pipeline::record::Recorder;

const TTL: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_worker_that_lost_its_lease_writes_nothing() {
    let (pool, _) = norn_shared::testing::fresh_pool().await;
    let id = norn_shared::domain::new_deployment_id();
    let mut conn = pool.acquire().await.unwrap();
    deployments::insert_queued(
        &mut conn,
        &NewDeployment {
            id: &id,
            app: "fenced",
            git_ref: "HEAD",
            idempotency_key: None,
            triggered_by: "test",
        },
    )
    .await
    .unwrap();

    let old = lease::try_acquire(&pool, "fenced", "w1/x", "deploy", TTL)
        .await
        .unwrap()
        .unwrap();
    // Re-acquiring our own lease keeps the token; a live lease is not taken.
    assert_eq!(
        lease::try_acquire(&pool, "fenced", "w1/x", "deploy", TTL)
            .await
            .unwrap(),
        Some(old)
    );
    assert_eq!(
        lease::try_acquire(&pool, "fenced", "w2/x", "deploy", TTL)
            .await
            .unwrap(),
        None
    );
    // w1 stops renewing (paused); its lease runs out and w2 takes over.
    sqlx::query("UPDATE app_leases SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let new = lease::try_acquire(&pool, "fenced", "w2/x", "deploy", TTL)
        .await
        .unwrap()
        .unwrap();
    assert!(new > old, "tokens only grow: {old} then {new}");

    // w1 wakes up: every write is rejected and the row is untouched.
    let mut stale = Recorder::new(pool.clone(), &id, "fenced", "w1", old, Vec::new());
    assert!(matches!(
        stale.step_started(Step::Clone).await,
        Err(WorkerError::Fenced)
    ));
    assert!(matches!(
        stale.failed(Step::Clone, "late", "", Duration::ZERO).await,
        Err(WorkerError::Fenced)
    ));
    assert!(matches!(
        stale.ended("late", "w1").await,
        Err(WorkerError::Fenced)
    ));
    assert!(!lease::extend(&pool, "fenced", "w1/x", TTL).await.unwrap());
    let d = deployments::get(&mut conn, &id).await.unwrap().unwrap();
    assert_eq!(d.status, "queued");
    assert_eq!(d.steps.0, serde_json::json!([]));

    // The holder of the current token writes normally.
    let mut current = Recorder::new(pool.clone(), &id, "fenced", "w2", new, Vec::new());
    current.step_started(Step::Clone).await.unwrap();
    let d = deployments::get(&mut conn, &id).await.unwrap().unwrap();
    assert_eq!(d.status, "building");
}
