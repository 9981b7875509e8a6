//! A connection goes back to the pool outside any transaction, however the
//! future that used it ended. A `begin()` cancelled while its `BEGIN` was in
//! flight once (sqlx 0.9.0) returned the connection inside an open
//! transaction: the next borrower's heartbeat ran in it and held its row lock
//! forever, and the drained worker of the fleet tests stopped beating.

use futures::FutureExt;
use sqlx::Connection;

/// What the server says of the session `pid`, asked from outside the pool.
async fn session_state(url: &str, pid: i32) -> String {
    let mut outside = sqlx::PgConnection::connect(url).await.unwrap();
    let (state,): (String,) = sqlx::query_as("SELECT state FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(&mut outside)
        .await
        .unwrap();
    state
}

#[tokio::test]
async fn a_begin_cancelled_in_flight_leaves_no_transaction_on_the_pooled_connection() {
    let (_, url) = norn_shared::testing::fresh_pool().await;
    // One connection, so the second borrower gets the very same session.
    let pool = norn_shared::db::connect(&url, 1).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    // One poll sends BEGIN and waits for its answer; dropping the future
    // there is what a timeout, a select! or an aborted task does. Now and
    // then the answer is already there within that poll (a loaded machine):
    // then it is a plain transaction, rolled back, and the cancel is tried
    // again.
    let mut answered_at_once = 0;
    loop {
        let mut conn = pool.acquire().await.unwrap();
        assert_eq!(session_state(&url, pid).await, "idle");
        match conn.begin().now_or_never() {
            None => break,
            Some(tx) => {
                tx.unwrap().rollback().await.unwrap();
                answered_at_once += 1;
                assert!(
                    answered_at_once < 50,
                    "BEGIN answered within one poll 50 times: it cannot be cancelled in flight here"
                );
            }
        }
    }

    // Borrowed again: the release (and whatever it flushed) is done.
    let again = pool.acquire().await.unwrap();
    assert_eq!(
        session_state(&url, pid).await,
        "idle",
        "the pool handed out a connection inside the cancelled BEGIN's transaction"
    );
    drop(again);
}
