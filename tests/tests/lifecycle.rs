//! Agent lifecycle triggers: a workflow gets one task per restart of its
//! agent (or of a named agent), keyed by the new generation, and a
//! redelivered `AgentRestarted` makes no second task.

use shepherd_e2e::{Stack, StackOptions, WAIT};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, RunnerState, TaskState};
use shepherd_testkit::eventually;

async fn restart_workflow(
    stack: &mut Stack,
    name: &str,
    agent: &str,
    watched: &str,
) -> anyhow::Result<sched::Workflow> {
    let workflow = stack
        .workflows
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: name.to_owned(),
                agent_id: agent.to_owned(),
                enabled: true,
                prompt_template: "echo resumed after {{metadata.generation}}".into(),
                trigger: Some(sched::Trigger {
                    kind: Some(sched::trigger::Kind::AgentRestart(
                        sched::AgentRestartTrigger {
                            agent_id: watched.to_owned(),
                        },
                    )),
                }),
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

#[tokio::test]
async fn one_task_per_agent_restart_and_none_for_a_redelivered_event() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let worker = stack
        .create_agent("worker", am::RestartMode::OnFailure)
        .await?;
    let watcher = stack
        .create_agent("watcher", am::RestartMode::OnFailure)
        .await?;
    // Its own agent's restarts, and another agent's.
    let own = restart_workflow(&mut stack, "resume", &worker.id, "").await?;
    let named = restart_workflow(&mut stack, "watch", &watcher.id, &worker.id).await?;

    for generation in [2, 3] {
        stack.restart_agent(&worker.id).await?;
        stack.wait_agent_ready(&worker.id, generation).await?;
    }
    for workflow in [&own, &named] {
        let done = eventually(WAIT, "a task per restart, run", || async {
            let tasks = stack.tasks(&workflow.id).await?;
            let finished =
                tasks.len() == 2 && tasks.iter().all(|t| t.state() == TaskState::Succeeded);
            Ok(finished.then_some(tasks))
        })
        .await?;
        let mut generations: Vec<String> = done
            .iter()
            .map(|task| {
                let fields = task.fields.clone().unwrap_or_default();
                assert_eq!(fields.metadata["agent_id"], worker.id);
                fields.metadata["generation"].clone()
            })
            .collect();
        generations.sort();
        assert_eq!(generations, ["2", "3"]);
        assert!(done.iter().any(|t| t.output.contains("resumed after 3")));
    }

    // Every event again: a scheduler that restarts from cursor 0 sees both
    // AgentRestarted events a second time, and makes no task for them.
    stack.kill_scheduler().await?;
    stack
        .db
        .client()
        .await?
        .execute("UPDATE scheduler.event_cursor SET last_seq = 0", &[])
        .await?;
    stack.start_scheduler().await?;
    let latest = stack
        .agent_events(&worker.id)
        .await?
        .last()
        .map_or(0, |event| event.sequence);
    eventually(WAIT, "the replay to pass the restarts", || async {
        let row = stack
            .db
            .client()
            .await?
            .query_one("SELECT last_seq FROM scheduler.event_cursor", &[])
            .await?;
        Ok((row.get::<_, i64>(0) as u64 >= latest).then_some(()))
    })
    .await?;
    for workflow in [&own, &named] {
        assert_eq!(
            stack.tasks(&workflow.id).await?.len(),
            2,
            "no task for a redelivery"
        );
    }
    // The restart of an unrelated agent triggers neither.
    stack.restart_agent(&watcher.id).await?;
    stack.wait_agent_ready(&watcher.id, 2).await?;
    stack.restart_agent(&worker.id).await?;
    stack.wait_agent_ready(&worker.id, 4).await?;
    eventually(WAIT, "the third restart's task", || async {
        Ok((stack.tasks(&own.id).await?.len() == 3).then_some(()))
    })
    .await?;
    assert_eq!(stack.tasks(&named.id).await?.len(), 3);
    Ok(())
}
