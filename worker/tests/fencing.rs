//! Fencing against a real Postgres: a worker whose app lease passed to
//! another one (it was paused or partitioned past the TTL) writes nothing.

use std::time::Duration;

use norn_shared::db::deployments::{self, NewDeployment};
use norn_shared::db::lease;
use norn_shared::domain::{DeploymentStatus, Step, StepStatus};
use norn_shared::infraspec::InfraSpec;
use norn_worker::WorkerError;
use norn_worker::pipeline::record::{Found, Recorder};

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

    // w1 wakes up: every write it can make is rejected, and nothing changes:
    // not the row (every column), not the saga, no live event, not the lease.
    let row = |pool: sqlx::PgPool, id: String| async move {
        sqlx::query_scalar::<_, serde_json::Value>(
            "SELECT to_jsonb(d) FROM deployments d WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = row(pool.clone(), id.clone()).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen(norn_shared::events::CHANNEL).await.unwrap();
    let spec = InfraSpec::from_json(serde_json::json!({
        "name": "fenced",
        "processes": {"web": {"port": 8080}},
    }))
    .unwrap();

    let mut stale = Recorder::new(pool.clone(), &id, "fenced", "w1", old, Vec::new());
    assert!(matches!(
        stale.started(1, None).await,
        Err(WorkerError::Fenced)
    ));
    assert!(matches!(
        stale.started(2, Some(Step::Build)).await,
        Err(WorkerError::Fenced)
    ));
    assert!(matches!(
        stale.step_started(Step::Clone).await,
        Err(WorkerError::Fenced)
    ));
    assert!(matches!(
        stale
            .step_finished(
                Step::Clone,
                StepStatus::Complete,
                "late",
                Duration::ZERO,
                Found {
                    commit_sha: Some("0123456789abcdef"),
                    image_tag: Some("fenced:0123456789ab"),
                    snapshot: None,
                },
            )
            .await,
        Err(WorkerError::Fenced)
    ));
    assert!(matches!(
        stale.failed(Step::Clone, "late", "", Duration::ZERO).await,
        Err(WorkerError::Fenced)
    ));
    assert!(matches!(
        stale.deployed("fenced:0123456789ab", &spec).await,
        Err(WorkerError::Fenced)
    ));
    assert!(matches!(
        stale.ended("late", "w1").await,
        Err(WorkerError::Fenced)
    ));
    assert!(!lease::extend(&pool, "fenced", "w1/x", TTL).await.unwrap());

    assert_eq!(row(pool.clone(), id.clone()).await, before);
    let d = deployments::get(&mut conn, &id).await.unwrap().unwrap();
    assert_eq!(d.status, DeploymentStatus::Queued);
    assert!(d.steps.0.is_empty());
    let (saga,): (i64,) = sqlx::query_as("SELECT count(*) FROM saga_events WHERE saga_id = $1")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(saga, 0, "the stale worker wrote saga events");
    let (holder, token): (String, i64) =
        sqlx::query_as("SELECT holder, token FROM app_leases WHERE app = 'fenced'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((holder.as_str(), token), ("w2/x", new));
    // Committed NOTIFYs arrive at once; none came.
    let heard = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(heard.is_err(), "the stale worker published {heard:?}");

    // The holder of the current token writes normally.
    let mut current = Recorder::new(pool.clone(), &id, "fenced", "w2", new, Vec::new());
    current.step_started(Step::Clone).await.unwrap();
    let d = deployments::get(&mut conn, &id).await.unwrap().unwrap();
    assert_eq!(d.status, DeploymentStatus::Building);
    // ...and its live event is published (the listener above works).
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("the current holder's event")
        .unwrap();
    assert!(heard.payload().contains(&id), "{}", heard.payload());
}
