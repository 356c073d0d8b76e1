//! Batched claims against a real PostgreSQL, on the batch pool whose
//! connections always use the generic plan: claims of many workflows
//! submitted together, in batches of every size, each fill their own
//! workflow's room and nothing more.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{claim, join, store, take_lease, workflow_with_room};
use shepherd_platform::db;
use shepherd_scheduler::model::TaskEnd;
use shepherd_scheduler::store::{InFlightScope, Outcome};
use shepherd_testkit::TestDb;

/// Only the batchers' connections are forced to the generic plan: the
/// other statements (`$1 IS NULL OR ...` filters) need plans made for
/// their values.
#[tokio::test]
async fn only_the_batch_pool_plans_generically() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let mode = async |pool: &db::DbPool| -> anyhow::Result<String> {
        let client = pool.get().await?;
        Ok(client.query_one("SHOW plan_cache_mode", &[]).await?.get(0))
    };
    let batches = db::connect_for_batches(&db.url, 1)?;
    let pool = db::connect(&db.url, 1)?;
    assert_eq!(mode(&batches).await?, "force_generic_plan");
    assert_eq!(mode(&pool).await?, "auto");
    Ok(())
}

/// Twenty workflows (room 2, three tasks each) claimed all at once, again
/// and again: every workflow gets exactly its room the first time, nothing
/// while its tasks are in flight, and one more task for each one finished.
#[tokio::test]
async fn concurrent_claims_fill_each_workflows_room_and_no_more() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let store = store(&db).await?;
    join(&store, &["a"]).await?;
    let mut workflows = Vec::new();
    for _ in 0..20 {
        let workflow = workflow_with_room(&store, 3, 2).await?;
        let term = take_lease(&store, workflow, "a").await?;
        workflows.push((workflow, term));
    }
    let claim_all = async || -> anyhow::Result<Vec<Vec<String>>> {
        let claims = workflows
            .iter()
            .map(|(workflow, term)| store.claim(claim(*workflow, "a", *term)));
        futures_util::future::try_join_all(claims)
            .await?
            .into_iter()
            .map(|claim| Ok(claim.tasks.into_iter().map(|task| task.id).collect()))
            .collect()
    };

    let first = claim_all().await?;
    for (tasks, (workflow, _)) in first.iter().zip(&workflows) {
        assert_eq!(tasks.len(), 2, "the room of {workflow}");
        assert!(
            tasks.iter().all(|id| id.starts_with(&workflow.to_string())),
            "{workflow} got another workflow's task: {tasks:?}"
        );
    }
    for _ in 0..6 {
        // More executions than PostgreSQL's custom-plan trial (five).
        assert!(claim_all().await?.iter().all(Vec::is_empty));
    }

    let outcomes: Vec<Outcome> = first
        .iter()
        .map(|tasks| Outcome {
            task_id: tasks[0].clone(),
            attempt: None,
            end: TaskEnd::Succeeded,
            output: String::new(),
        })
        .collect();
    store.complete_many(&outcomes).await?;
    let second = claim_all().await?;
    assert!(
        second.iter().all(|tasks| tasks.len() == 1),
        "one task each after one finished: {second:?}"
    );
    assert!(claim_all().await?.iter().all(Vec::is_empty), "all taken");
    Ok(())
}

/// A claim that can take nothing does not lock its lease: a takeover in
/// progress (here, a transaction holding the lease row) does not hold up a
/// fleet of runners that come back to empty workflows, nor a busy
/// workflow's runner woken again while it has no room, and nothing is
/// written for them.
#[tokio::test]
async fn a_claim_that_can_take_nothing_does_not_wait_on_its_lease() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let store = store(&db).await?;
    join(&store, &["a"]).await?;
    // Nothing pending; and two pending with room for one, the one taken.
    let empty = workflow_with_room(&store, 0, 1).await?;
    let full = workflow_with_room(&store, 2, 1).await?;
    let mut terms = Vec::new();
    for workflow in [empty, full] {
        let term = take_lease(&store, workflow, "a").await?;
        terms.push(term);
    }
    assert_eq!(
        store.claim(claim(full, "a", terms[1])).await?.tasks.len(),
        1
    );
    let mut taker = db.client().await?;
    let takeover = taker.transaction().await?;
    takeover
        .execute(
            "SELECT FROM scheduler.runner_leases WHERE workflow_id = ANY($1) FOR UPDATE",
            &[&vec![empty, full]],
        )
        .await?;
    for (workflow, term) in [empty, full].into_iter().zip(terms) {
        let claimed = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            store.claim(claim(workflow, "a", term)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("a claim that can take nothing waited for the lease row"))??;
        assert!(claimed.tasks.is_empty());
    }
    takeover.rollback().await?;
    Ok(())
}

/// The in-flight tasks a settle pass asks about narrow to one agent's
/// workflows (an agent restarted), or include every agent's.
#[tokio::test]
async fn in_flight_tasks_narrow_to_one_agents_workflows() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let store = store(&db).await?;
    join(&store, &["a"]).await?;
    let mut workflows = Vec::new();
    for _ in 0..2 {
        // Each with an agent of its own.
        let workflow = workflow_with_room(&store, 1, 1).await?;
        let term = take_lease(&store, workflow, "a").await?;
        assert_eq!(
            store.claim(claim(workflow, "a", term)).await?.tasks.len(),
            1
        );
        workflows.push(workflow);
    }
    let agent = store.get_workflow(workflows[0]).await?.agent_id;
    let scope = |agent| InFlightScope {
        owner: "a".to_owned(),
        workflow: None,
        agent,
        min_age: std::time::Duration::ZERO,
    };
    let of_agent = store.in_flight(&scope(Some(agent))).await?;
    assert_eq!(
        of_agent.iter().map(|t| t.workflow_id).collect::<Vec<_>>(),
        [workflows[0]]
    );
    assert_eq!(store.in_flight(&scope(None)).await?.len(), 2);
    Ok(())
}

/// Whether a workflow names keys is learned from its claims (its next
/// claims go straight to the keyed transaction), and the hint never decides
/// what is claimed: keys taken away mid-way let the workflow fill its own
/// room, keys given back hold it to the key's limit again.
#[tokio::test]
async fn a_workflow_whose_keys_change_is_claimed_by_its_keys_of_the_moment() -> anyhow::Result<()> {
    use shepherd_scheduler::model::ConcurrencyKey;
    let db = TestDb::create().await?;
    let store = store(&db).await?;
    join(&store, &["a"]).await?;
    store
        .put_key(&ConcurrencyKey {
            name: "k".into(),
            max_running: 1,
            rate: None,
        })
        .await?;
    let workflow = workflow_with_room(&store, 6, 3).await?;
    let set_keys = async |keys: &[&str]| -> anyhow::Result<()> {
        let mut definition = store.get_workflow(workflow).await?;
        definition.concurrency_keys = keys.iter().map(|key| (*key).to_owned()).collect();
        store.update_workflow(&definition, false).await?;
        Ok(())
    };
    let term = take_lease(&store, workflow, "a").await?;
    let claimed = async || -> anyhow::Result<Vec<String>> {
        let claim = store.claim(claim(workflow, "a", term)).await?;
        Ok(claim.tasks.into_iter().map(|task| task.id).collect())
    };

    set_keys(&["k"]).await?;
    let mut running = claimed().await?;
    assert_eq!(running.len(), 1, "the key's limit");
    assert_eq!(claimed().await?.len(), 0, "the key is taken");
    set_keys(&[]).await?;
    running.extend(claimed().await?);
    assert_eq!(running.len(), 3, "its own room, with the key gone");
    assert_eq!(claimed().await?.len(), 0, "its room is full");

    let outcomes: Vec<Outcome> = running
        .into_iter()
        .map(|task_id| Outcome {
            task_id,
            attempt: None,
            end: TaskEnd::Succeeded,
            output: String::new(),
        })
        .collect();
    store.complete_many(&outcomes).await?;
    set_keys(&["k"]).await?;
    assert_eq!(claimed().await?.len(), 1, "the key's limit again");
    assert_eq!(claimed().await?.len(), 0, "the key is taken again");
    Ok(())
}
