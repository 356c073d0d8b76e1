//! Runner leases against a real PostgreSQL: one holder at a time, takeover
//! once the holder's membership expires, and fencing: a claim with a
//! superseded term, or by a replica whose membership expired, takes
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{claim, join, store, take_lease, workflow_with_tasks};
use shepherd_scheduler::store::LeaseAcquisition;
use shepherd_testkit::TestDb;

#[tokio::test]
async fn one_holder_at_a_time_and_a_superseded_term_claims_nothing() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let store = store(&db).await?;
    let workflow = workflow_with_tasks(&store, 6).await?;
    join(&store, &["a", "b"]).await?;

    let LeaseAcquisition::Acquired { term: first, .. } = store.acquire_lease(workflow, "a").await?
    else {
        anyhow::bail!("a free lease must be acquired");
    };
    // Held by a live replica: another one stands by.
    match store.acquire_lease(workflow, "b").await? {
        LeaseAcquisition::HeldBy { owner } => assert_eq!(owner, "a"),
        other => panic!("b must not get a's lease: {other:?}"),
    }
    // Without the lease there is no claim; with it, up to the concurrency.
    assert!(
        store
            .claim(claim(workflow, "b", first))
            .await?
            .tasks
            .is_empty()
    );
    assert_eq!(
        store.claim(claim(workflow, "a", first)).await?.tasks.len(),
        2
    );

    // a stops renewing its membership (a paused process) until it runs
    // out; its claims stop at once, and b takes over with a new term.
    db.client()
        .await?
        .execute(
            "UPDATE scheduler.replicas SET expires_at = now() - interval '1 second' WHERE id = 'a'",
            &[],
        )
        .await?;
    assert!(
        store
            .claim(claim(workflow, "a", first))
            .await?
            .tasks
            .is_empty(),
        "a replica whose membership expired claims nothing"
    );
    assert!(store.lease_holders(&[workflow]).await?.is_empty());
    let LeaseAcquisition::Acquired { term: second, .. } =
        store.acquire_lease(workflow, "b").await?
    else {
        anyhow::bail!("the lease of a replica that is gone must be taken over");
    };
    assert!(second > first, "terms only grow: {first} then {second}");

    // a wakes up (a paused process) and renews its membership: its claims
    // are fenced by the term, and its stale release is a no-op.
    join(&store, &["a"]).await?;
    store.release_lease(workflow, "a", first).await?;
    assert!(
        store
            .claim(claim(workflow, "a", first))
            .await?
            .tasks
            .is_empty()
    );
    assert!(
        store
            .claim(claim(workflow, "b", first))
            .await?
            .tasks
            .is_empty()
    );
    // b holds the lease, but a's two tasks are still in flight: no room.
    assert!(
        store
            .claim(claim(workflow, "b", second))
            .await?
            .tasks
            .is_empty()
    );
    assert_eq!(
        store.lease_holders(&[workflow]).await?,
        vec![(workflow, "b".to_owned())]
    );
    Ok(())
}

#[tokio::test]
async fn a_released_lease_is_free_at_once_and_a_restarted_owner_takes_its_own_back()
-> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let store = store(&db).await?;
    let workflow = workflow_with_tasks(&store, 1).await?;
    join(&store, &["a", "b"]).await?;

    let term = take_lease(&store, workflow, "a").await?;
    // The same owner (a restarted replica) gets it back at once, fencing
    // out its earlier self.
    let LeaseAcquisition::Acquired { term: again, .. } = store.acquire_lease(workflow, "a").await?
    else {
        anyhow::bail!("an owner takes its own lease back");
    };
    assert!(again > term);
    assert!(
        store
            .claim(claim(workflow, "a", term))
            .await?
            .tasks
            .is_empty()
    );

    store.release_lease(workflow, "a", again).await?;
    match store.acquire_lease(workflow, "b").await? {
        LeaseAcquisition::Acquired { term: taken, .. } => assert!(taken > again),
        other => panic!("a released lease is free: {other:?}"),
    }
    assert_eq!(
        store
            .claim(claim(workflow, "b", again + 1))
            .await?
            .tasks
            .len(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn a_disabled_workflow_gets_no_lease_and_its_holder_claims_nothing() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let store = store(&db).await?;
    let workflow = workflow_with_tasks(&store, 3).await?;
    join(&store, &["a", "b"]).await?;
    let term = take_lease(&store, workflow, "a").await?;

    // Disabled through another replica: the holder's claims take nothing,
    // and no replica can take the lease to run it.
    let mut disabled = store.get_workflow(workflow).await?;
    disabled.enabled = false;
    store.update_workflow(&disabled, false).await?;
    assert!(
        store
            .claim(claim(workflow, "a", term))
            .await?
            .tasks
            .is_empty()
    );
    store.release_lease(workflow, "a", term).await?;
    assert_eq!(
        store.acquire_lease(workflow, "b").await?,
        LeaseAcquisition::WorkflowDisabled
    );
    // A deleted workflow likewise (and its lease row goes with it).
    store.delete_workflow(workflow).await?;
    assert_eq!(
        store.acquire_lease(workflow, "a").await?,
        LeaseAcquisition::WorkflowDisabled
    );
    assert!(store.lease_holders(&[workflow]).await?.is_empty());
    Ok(())
}

/// A new holder learns with the lease whether there is anything to claim
/// now: a pending task due now, not one delayed, nor one in flight (that
/// one it settles first).
#[tokio::test]
async fn taking_a_lease_tells_whether_a_task_is_claimable_now() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let store = store(&db).await?;
    join(&store, &["a"]).await?;
    let acquired = async |workflow| -> anyhow::Result<(i64, bool, bool)> {
        match store.acquire_lease(workflow, "a").await? {
            LeaseAcquisition::Acquired {
                term,
                in_flight,
                claimable,
            } => Ok((term, in_flight, claimable)),
            other => anyhow::bail!("a free lease must be acquired: {other:?}"),
        }
    };

    let empty = workflow_with_tasks(&store, 0).await?;
    let (_, in_flight, claimable) = acquired(empty).await?;
    assert!(!in_flight && !claimable, "no task at all");

    let workflow = workflow_with_tasks(&store, 1).await?;
    let (term, in_flight, claimable) = acquired(workflow).await?;
    assert!(!in_flight && claimable, "a pending task due now");

    assert_eq!(
        store.claim(claim(workflow, "a", term)).await?.tasks.len(),
        1
    );
    store.release_lease(workflow, "a", term).await?;
    let (_, in_flight, claimable) = acquired(workflow).await?;
    assert!(in_flight && !claimable, "its one task is in flight");

    let delayed = workflow_with_tasks(&store, 1).await?;
    db.client()
        .await?
        .execute(
            "UPDATE scheduler.tasks SET not_before = now() + interval '1 hour' WHERE workflow_id = $1",
            &[&delayed],
        )
        .await?;
    let (_, in_flight, claimable) = acquired(delayed).await?;
    assert!(!in_flight && !claimable, "its one task is not due yet");
    Ok(())
}
