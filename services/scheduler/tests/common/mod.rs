//! What the scheduler's store tests share: a migrated store on a test
//! database, workflows with pending tasks, replicas that joined.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses a part

use std::time::Duration;

use shepherd_platform::db;
use shepherd_scheduler::model::{TaskFields, Trigger};
use shepherd_scheduler::store::{
    self, ClaimRequest, LeaseAcquisition, NewWorkflow, Rendered, Store,
};
use shepherd_testkit::TestDb;
use uuid::Uuid;

pub(crate) async fn store(db: &TestDb) -> anyhow::Result<Store> {
    let pool = db::open(&db.url, 4, store::SCHEMA, store::MIGRATIONS).await?;
    let batches = db::connect_for_batches(&db.url, db::BATCH_POOL_SIZE)?;
    Ok(Store::new(pool, &batches))
}

/// A workflow (max concurrency 2) with `tasks` pending tasks.
pub(crate) async fn workflow_with_tasks(store: &Store, tasks: usize) -> anyhow::Result<Uuid> {
    workflow_with_room(store, tasks, 2).await
}

/// A workflow with `tasks` pending tasks and the given max concurrency.
pub(crate) async fn workflow_with_room(
    store: &Store,
    tasks: usize,
    max_concurrency: u32,
) -> anyhow::Result<Uuid> {
    let workflow = store
        .insert_workflow(
            &NewWorkflow {
                name: format!("leased-{}", Uuid::now_v7()),
                agent_id: Uuid::now_v7(),
                enabled: true,
                trigger: Trigger::Manual,
                prompt_template: String::new(),
                max_concurrency,
                max_attempts: 1,
                task_timeout: Duration::from_secs(60),
                retry: Default::default(),
                tool_policy: Default::default(),
                concurrency_keys: Vec::new(),
            },
            None,
        )
        .await?;
    for n in 0..tasks {
        store
            .insert_task(
                workflow.id,
                &format!("t{n}"),
                &TaskFields::default(),
                &Rendered {
                    prompt: String::new(),
                    script: String::new(),
                    timeout: Duration::from_secs(60),
                    tool_policy: Default::default(),
                    priority: 0,
                },
                &Default::default(),
            )
            .await?;
    }
    Ok(workflow.id)
}

/// Replicas join (renew their membership rows) for a minute.
pub(crate) async fn join(store: &Store, replicas: &[&str]) -> anyhow::Result<()> {
    for replica in replicas {
        store
            .replica_heartbeat(replica, false, Duration::from_secs(60), None)
            .await?;
    }
    Ok(())
}

/// Takes a free lease for `owner`; returns its term.
pub(crate) async fn take_lease(store: &Store, workflow: Uuid, owner: &str) -> anyhow::Result<i64> {
    match store.acquire_lease(workflow, owner).await? {
        LeaseAcquisition::Acquired { term, .. } => Ok(term),
        other => anyhow::bail!("a free lease must be acquired, not {other:?}"),
    }
}

pub(crate) fn claim(workflow: Uuid, owner: &str, term: i64) -> ClaimRequest {
    ClaimRequest {
        workflow,
        owner: owner.to_owned(),
        term,
    }
}

/// Runs `end_gone_replicas` as `me` until the live replicas are `expected`
/// (a session's end reaches the server's lock table a moment after the
/// client dropped it); fails after ten seconds.
pub(crate) async fn eventually_live(
    store: &Store,
    me: &str,
    expected: &[&str],
) -> anyhow::Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let live = store.end_gone_replicas(me).await?;
        if live == expected {
            return Ok(live);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "live replicas {live:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
