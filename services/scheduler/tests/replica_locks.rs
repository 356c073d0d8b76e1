//! Replicas found gone through their session locks, against a real
//! PostgreSQL: a held lock keeps its replica's row, a lock whose session
//! ended lets any other replica end the row at once, and a lock cannot be
//! taken twice.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::store;
use shepherd_platform::session_lock::{SessionLock, random_key};
use shepherd_testkit::TestDb;

#[tokio::test]
async fn a_replica_whose_session_ended_is_ended_by_another_at_once() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let store = store(&db).await?;
    let ttl = Duration::from_secs(600);
    let (key_a, key_b) = (random_key()?, random_key()?);
    let lock_a = SessionLock::acquire(&db.url, key_a).await?;
    let lock_b = SessionLock::acquire(&db.url, key_b).await?;
    assert!(
        SessionLock::acquire(&db.url, key_a).await.is_err(),
        "a held lock cannot be taken again"
    );
    store
        .replica_heartbeat("a", false, ttl, Some(key_a))
        .await?;
    let joined = store
        .replica_heartbeat("b", false, ttl, Some(key_b))
        .await?;
    assert_eq!(joined.live, ["a", "b"]);
    assert!(!joined.was_ended);

    // Both sessions live: nobody is ended.
    assert_eq!(store.end_gone_replicas("a").await?, ["a", "b"]);

    // b's session ends (its process died): a ends b's row at once, though
    // b's row had ten minutes left, and b's next renewal learns it.
    drop(lock_b);
    let live = common::eventually_live(&store, "a", &["a"]).await?;
    assert_eq!(live, ["a"]);
    let back = SessionLock::acquire(&db.url, key_b).await?;
    let renewal = store
        .replica_heartbeat("b", false, ttl, Some(key_b))
        .await?;
    assert!(renewal.was_ended, "b learns its row was ended");
    assert_eq!(renewal.live, ["a", "b"]);

    // A replica without a lock (an older version) only expires.
    store.replica_heartbeat("old", false, ttl, None).await?;
    assert_eq!(store.end_gone_replicas("a").await?, ["a", "b", "old"]);
    drop((lock_a, back));
    Ok(())
}
