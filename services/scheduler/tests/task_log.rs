//! The task change log against a real PostgreSQL: batched claims and
//! outcomes log every change once, in commit order (one trigger per
//! statement); a task's changes are found through its workflow; pruning
//! forgets old changes in bounded chunks and keeps recent ones.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{claim, join, store, workflow_with_room};
use shepherd_scheduler::model::{TaskEnd, TaskState};
use shepherd_scheduler::store::{LeaseAcquisition, Outcome, Store, TaskEventFilter};
use shepherd_testkit::TestDb;
use uuid::Uuid;

/// The log as (task, state, attempt, is progress), from the start, once it
/// shows at least `expected` changes (or after a deadline). The log shows
/// a change once every older transaction on the server has ended, and
/// other tests run transactions on the same server.
async fn log(
    store: &Store,
    filter: &TaskEventFilter,
    expected: usize,
) -> Vec<(String, TaskState, u32, bool)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = store
            .task_changes(Default::default(), filter, 1000)
            .await
            .expect("the log reads");
        if page.changes.len() >= expected || tokio::time::Instant::now() > deadline {
            return page
                .changes
                .into_iter()
                .map(|c| (c.task_id, c.state, c.attempt, c.progress.is_some()))
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn lease(store: &Store, workflow: Uuid) -> i64 {
    join(store, &["a"]).await.expect("joined");
    match store.acquire_lease(workflow, "a").await.expect("leased") {
        LeaseAcquisition::Acquired { term, .. } => term,
        other => panic!("a free lease must be acquired: {other:?}"),
    }
}

fn outcome(task_id: &str, end: TaskEnd) -> Outcome {
    Outcome {
        task_id: task_id.to_owned(),
        attempt: Some(1),
        end,
        output: String::new(),
    }
}

#[tokio::test]
async fn batched_claims_and_outcomes_log_each_change_once_and_room_is_counted() -> anyhow::Result<()>
{
    let db = TestDb::create().await?;
    let store = store(&db).await?;
    let workflow = workflow_with_room(&store, 5, 3).await?;
    let term = lease(&store, workflow).await;

    // Room for three; none left until one ends.
    let first = store.claim(claim(workflow, "a", term)).await?.tasks;
    assert_eq!(first.len(), 3);
    assert!(
        store
            .claim(claim(workflow, "a", term))
            .await?
            .tasks
            .is_empty()
    );
    // A progress report changes no state: logged as progress only.
    store
        .record_progress(&first[0].id, 1, "halfway", 0.5, "")
        .await?;
    store
        .complete_many(&[
            outcome(&first[0].id, TaskEnd::Succeeded),
            outcome(&first[1].id, TaskEnd::Failed),
        ])
        .await?;
    let second = store.claim(claim(workflow, "a", term)).await?.tasks;
    assert_eq!(second.len(), 2, "two ended, two claimed");

    let all = log(&store, &TaskEventFilter::default(), 13).await;
    let states = |state: TaskState| all.iter().filter(|c| c.1 == state && !c.3).count();
    assert_eq!(states(TaskState::Pending), 5, "{all:?}");
    assert_eq!(states(TaskState::Dispatched), 5, "{all:?}");
    assert_eq!(states(TaskState::Succeeded), 1, "{all:?}");
    assert_eq!(states(TaskState::Failed), 1, "{all:?}");
    assert_eq!(all.iter().filter(|c| c.3).count(), 1, "{all:?}");
    assert_eq!(all.len(), 13, "nothing logged twice: {all:?}");

    // One task's changes, in order, through its workflow's index.
    let task = first[0].id.clone();
    let own = log(
        &store,
        &TaskEventFilter {
            workflow: None,
            task: Some(task.clone()),
        },
        4,
    )
    .await;
    assert_eq!(
        own,
        vec![
            (task.clone(), TaskState::Pending, 0, false),
            (task.clone(), TaskState::Dispatched, 1, false),
            (task.clone(), TaskState::Dispatched, 1, true),
            (task, TaskState::Succeeded, 1, false),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn pruning_forgets_old_changes_in_chunks_and_keeps_recent_ones() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let store = store(&db).await?;
    // Old changes first (commit order follows time), more than one chunk.
    db.client()
        .await?
        .execute(
            "INSERT INTO scheduler.task_events (task_id, workflow_id, state, attempt, created_at)
             SELECT 'old:' || g, gen_random_uuid(), 'pending', 0, now() - interval '8 days'
             FROM generate_series(1, 12000) g",
            &[],
        )
        .await?;
    let workflow = workflow_with_room(&store, 4, 1).await?;
    let week = Duration::from_secs(7 * 24 * 3600);
    assert_eq!(store.prune_task_changes(week).await?, 12000);
    let kept = log(&store, &TaskEventFilter::default(), 4).await;
    assert_eq!(kept.len(), 4, "the recent changes stay: {kept:?}");
    assert!(kept.iter().all(|c| c.0.starts_with(&workflow.to_string())));
    assert_eq!(store.prune_task_changes(week).await?, 0);
    Ok(())
}
