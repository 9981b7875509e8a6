//! Periodic health checks: scheduler enqueues, worker probes, API reports.

mod common;

use std::time::Duration;

use common::*;

async fn checks(h: &Harness, app: &str) -> Vec<bool> {
    sqlx::query_as::<_, (bool,)>(
        "SELECT healthy FROM health_checks WHERE app = $1 ORDER BY checked_at",
    )
    .bind(app)
    .fetch_all(&h.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(b,)| b)
    .collect()
}

/// Enqueues checks until `app` has `n` rows; the slot key allows one per second.
async fn probe_until(h: &Harness, app: &str, n: usize) -> Vec<bool> {
    eventually(Duration::from_secs(30), "health check rows", || async {
        norn_scheduler::health::enqueue_checks(&h.pool, Duration::from_secs(1))
            .await
            .unwrap();
        let c = checks(h, app).await;
        (c.len() >= n).then_some(c)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_that_goes_down_shows_in_its_checks() {
    let h = Harness::start().await;
    let (app, _repo) = h.app_serving_v1("hc").await;
    let first = probe_until(&h, &app, 1).await;
    assert!(first[0], "a serving app is healthy");

    // The app's containers die; a check soon says so. (Not necessarily the
    // next one: a check already in flight may have probed before the removal.)
    remove_containers(&app).await;
    eventually(Duration::from_secs(30), "an unhealthy check", || async {
        let n = checks(&h, &app).await.len();
        let all = probe_until(&h, &app, n + 1).await;
        (!all[all.len() - 1]).then_some(())
    })
    .await;

    let (status, body) = h
        .get(&format!("/api/apps/{app}/health-checks?range=1h"))
        .await;
    assert_eq!(status, 200, "{body}");
    let n = body["checks"].as_i64().unwrap();
    let healthy = body["healthy"].as_i64().unwrap();
    assert!(n >= 2 && healthy >= 1 && healthy < n, "{body}");
    let uptime = body["uptimePercent"].as_f64().unwrap();
    assert!(
        (uptime - 100.0 * healthy as f64 / n as f64).abs() < 0.01,
        "{body}"
    );
    assert!(body["meanResponseMs"].as_f64().is_some(), "{body}");
    let newest = &body["items"][0];
    assert_eq!(newest["healthy"], false, "{body}");
    assert!(!newest["error"].as_str().unwrap().is_empty(), "{body}");

    let (status, body) = h
        .get(&format!("/api/apps/{app}/health-checks?range=25h"))
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("range")),
        "{body}"
    );
    let (status, _) = h.get("/api/apps/nope/health-checks").await;
    assert_eq!(status, 404);
}
