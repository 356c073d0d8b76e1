//! Result chaining: workflow B triggers on the outcome of workflow A's
//! tasks. The child is inserted in the transaction that records the
//! parent's outcome, so a crash right after can neither drop nor duplicate
//! it; chains run in order, see their parent's output, and a cycle stops at
//! the depth limit with its reason on record.

use shepherd_e2e::{Stack, StackOptions, WAIT, lines, wait_lines};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, RunnerState, TaskState};
use shepherd_testkit::eventually;

async fn chained(
    stack: &mut Stack,
    name: &str,
    agent: &str,
    parent: &str,
    template: &str,
) -> anyhow::Result<sched::Workflow> {
    let workflow = stack
        .workflows
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: name.to_owned(),
                agent_id: agent.to_owned(),
                enabled: true,
                prompt_template: template.to_owned(),
                trigger: Some(chain_on(parent)),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    stack
        .wait_runner(&workflow.id, RunnerState::Running, "")
        .await?;
    Ok(workflow)
}

fn chain_on(parent: &str) -> sched::Trigger {
    sched::Trigger {
        kind: Some(sched::trigger::Kind::Chain(sched::ChainTrigger {
            parent_workflow_id: parent.to_owned(),
            on: sched::ChainOn::Any as i32,
        })),
    }
}

#[tokio::test]
async fn a_chain_runs_in_order_and_sees_its_parents_output() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("chainer", am::RestartMode::OnFailure)
        .await?;
    let order = stack.scratch_file("order");
    let log = order.display();
    let a = stack
        .create_workflow(
            "a",
            &agent.id,
            true,
            &format!("echo A >> {log}; echo alpha-says-hi"),
        )
        .await?;
    stack.wait_runner(&a.id, RunnerState::Running, "").await?;
    let b = chained(
        &mut stack,
        "b",
        &agent.id,
        &a.id,
        &format!("echo B {{{{parent.outcome}}}} {{{{parent.output}}}} >> {log}; echo beta"),
    )
    .await?;
    let c = chained(
        &mut stack,
        "c",
        &agent.id,
        &b.id,
        &format!("echo C {{{{parent.title}}}} >> {log}"),
    )
    .await?;

    let first = stack.trigger(&a.id, "first", "the-issue").await?;
    wait_lines(&order, 3).await?;
    assert_eq!(
        lines(&order),
        ["A", "B succeeded alpha-says-hi", "C the-issue"],
        "in order, each seeing its parent"
    );
    let c_task = eventually(WAIT, "C to succeed", || async {
        Ok(stack
            .tasks(&c.id)
            .await?
            .into_iter()
            .find(|t| t.state() == TaskState::Succeeded))
    })
    .await?;
    let b_tasks = stack.tasks(&b.id).await?;
    assert_eq!(b_tasks.len(), 1);
    assert_eq!(b_tasks[0].parent_task_id, first.id);
    assert_eq!(b_tasks[0].chain_depth, 1);
    assert_eq!(c_task.parent_task_id, b_tasks[0].id);
    assert_eq!(c_task.chain_depth, 2);
    Ok(())
}

#[tokio::test]
async fn a_self_chain_stops_at_the_depth_limit_with_its_reason() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("looper", am::RestartMode::OnFailure)
        .await?;
    let runs = stack.scratch_file("runs");
    let workflow = stack
        .create_workflow(
            "loop",
            &agent.id,
            true,
            &format!("echo run >> {}", runs.display()),
        )
        .await?;
    stack
        .workflows
        .update_workflow(sched::UpdateWorkflowRequest {
            workflow: Some(sched::Workflow {
                id: workflow.id.clone(),
                trigger: Some(chain_on(&workflow.id)),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["trigger".into()],
            }),
        })
        .await?;
    stack.trigger(&workflow.id, "seed", "seed").await?;
    let stub = eventually(WAIT, "the chain to stop", || async {
        let all = stack.tasks(&workflow.id).await?;
        Ok(all.into_iter().find(|t| t.state() == TaskState::Failed))
    })
    .await?;
    assert_eq!(stub.chain_depth, 11);
    assert!(
        stub.last_error.contains("past the limit of 10"),
        "{}",
        stub.last_error
    );
    let all = eventually(WAIT, "every run to finish", || async {
        let all = stack.tasks(&workflow.id).await?;
        Ok(all
            .iter()
            .all(|t| t.state() != TaskState::Pending && t.state() != TaskState::Dispatched)
            .then_some(all))
    })
    .await?;
    assert_eq!(
        all.len(),
        12,
        "the seed, ten chained runs and the stopped one"
    );
    assert_eq!(lines(&runs).len(), 11, "the stopped one never ran");
    Ok(())
}

#[tokio::test]
async fn a_scheduler_killed_after_the_parents_outcome_makes_exactly_one_child() -> anyhow::Result<()>
{
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("parent", am::RestartMode::OnFailure)
        .await?;
    let ran = stack.scratch_file("child-ran");
    let a = stack
        .create_workflow("a", &agent.id, true, "echo parent")
        .await?;
    stack.wait_runner(&a.id, RunnerState::Running, "").await?;
    let b = chained(
        &mut stack,
        "b",
        &agent.id,
        &a.id,
        &format!("echo child >> {}", ran.display()),
    )
    .await?;

    // A scheduler that aborts right after it commits its first outcome.
    stack.kill_scheduler().await?;
    let (mut doomed, client) = stack
        .start_replica(&[(
            "SHEPHERD_FAILPOINTS",
            "scheduler.after_outcome=abort".to_owned(),
        )])
        .await?;
    stack.workflows = client;
    let parent = stack.trigger(&a.id, "parent", "parent").await?;
    assert!(
        doomed.wait_exit(WAIT).await?,
        "the scheduler aborts at the failpoint"
    );
    // The parent's outcome and its child were committed together.
    let client = stack.db.client().await?;
    let parent_state: String = client
        .query_one(
            "SELECT state FROM scheduler.tasks WHERE id = $1",
            &[&parent.id],
        )
        .await?
        .get(0);
    assert_eq!(parent_state, "succeeded");
    let children: i64 = client
        .query_one(
            "SELECT count(*) FROM scheduler.tasks WHERE workflow_id = $1::text::uuid",
            &[&b.id],
        )
        .await?
        .get(0);
    assert_eq!(children, 1, "the child exists the moment the outcome does");

    stack.start_scheduler().await?;
    eventually(WAIT, "the child to run", || async {
        let done = stack.tasks(&b.id).await?;
        Ok(done
            .iter()
            .any(|t| t.state() == TaskState::Succeeded)
            .then_some(()))
    })
    .await?;
    assert_eq!(stack.tasks(&b.id).await?.len(), 1, "exactly one child");
    assert_eq!(lines(&ran), ["child"], "run once");
    Ok(())
}
