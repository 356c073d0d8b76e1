//! What `ListRunners` reads of the workflows, against a real PostgreSQL:
//! every workflow or one agent's, in id order, with what a runner's view
//! needs of each.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{store, workflow_with_tasks};
use shepherd_testkit::TestDb;

#[tokio::test]
async fn runner_workflows_are_every_workflow_or_one_agents_in_id_order() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let store = store(&db).await?;
    let mut all = Vec::new();
    for _ in 0..3 {
        all.push(workflow_with_tasks(&store, 0).await?);
    }
    all.sort();
    let one = store.get_workflow(all[1]).await?;
    let mut disabled = store.get_workflow(all[2]).await?;
    disabled.enabled = false;
    store.update_workflow(&disabled, false).await?;

    let listed = store.runner_workflows(None).await?;
    let ids: Vec<_> = listed.iter().map(|w| w.id).collect();
    assert_eq!(ids, all, "every workflow, in id order");
    assert!(listed[0].enabled && listed[1].enabled);
    assert!(
        !listed[2].enabled,
        "a disabled workflow is listed as disabled"
    );

    // Each workflow of `workflow_with_tasks` has an agent of its own.
    let of_agent = store.runner_workflows(Some(one.agent_id)).await?;
    assert_eq!(of_agent.len(), 1);
    assert_eq!(of_agent[0].id, one.id);
    assert_eq!(of_agent[0].agent_id, one.agent_id);
    assert_eq!(of_agent[0].updated_at, one.updated_at);
    Ok(())
}
