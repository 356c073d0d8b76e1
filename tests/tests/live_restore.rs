//! Live restore: agents outlive a manager restart (SIGTERM for an upgrade,
//! or a crash), the new manager adopts them with their in-flight tasks, and
//! nothing restarts: same process, same generation, no `AgentRestarted`.

use shepherd_e2e::{Stack, StackOptions, lines, slow_workflow, wait_lines};
use shepherd_proto::agentmanager::v1::{self as am, agent_event};
use shepherd_proto::scheduler::v1::TaskState;

#[derive(Debug, Clone, Copy)]
enum ManagerStop {
    /// SIGTERM: an upgrade.
    Graceful,
    /// SIGKILL: a crash.
    Crash,
}

/// A task runs across a manager restart: it completes exactly once, in
/// its first attempt, on the same agent process, and the agent never
/// restarts.
async fn a_task_survives_a_manager_restart(stop: ManagerStop) -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let (workflow, started, finished) = slow_workflow(&mut stack, 2.0).await?;
    let before = stack.agent(&workflow.agent_id).await?;

    let task = stack.trigger(&workflow.id, "long", "long").await?;
    wait_lines(&started, 1).await?;
    match stop {
        ManagerStop::Graceful => {
            stack.manager.terminate().await?;
        }
        ManagerStop::Crash => stack.manager.kill().await?,
    }
    assert!(
        shepherd_testkit::process_alive(before.pid),
        "the agent outlives its manager ({stop:?})"
    );
    stack.restart_manager().await?;

    let done = stack
        .wait_tasks(std::slice::from_ref(&task.id), TaskState::Succeeded)
        .await?;
    assert_eq!(done[0].attempts, 1, "the task was never lost: {done:?}");
    assert_eq!(lines(&started), ["long"], "it ran once");
    assert_eq!(lines(&finished), ["long"]);
    stack.wait_agent_ready(&workflow.agent_id, 1).await?;
    let after = stack.agent(&workflow.agent_id).await?;
    assert_eq!(after.pid, before.pid, "the same process, adopted");
    assert_eq!(after.generation, before.generation);
    let events = stack.agent_events(&workflow.agent_id).await?;
    assert!(
        !events.iter().any(|event| matches!(
            event.kind,
            Some(agent_event::Kind::Restarted(_) | agent_event::Kind::Exited(_))
        )),
        "no restart, no exit: {events:?}"
    );

    // And it keeps taking work.
    let next = stack.trigger(&workflow.id, "next", "next").await?;
    stack
        .wait_tasks(std::slice::from_ref(&next.id), TaskState::Succeeded)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_task_running_across_a_manager_upgrade_completes_once_on_the_adopted_agent()
-> anyhow::Result<()> {
    a_task_survives_a_manager_restart(ManagerStop::Graceful).await
}

#[tokio::test]
async fn a_task_running_across_a_manager_crash_completes_once_on_the_adopted_agent()
-> anyhow::Result<()> {
    a_task_survives_a_manager_restart(ManagerStop::Crash).await
}

#[tokio::test]
async fn an_adopted_agents_output_still_reaches_its_logs() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent_with(am::Agent {
            name: "chatty".into(),
            env: [("RUST_LOG".to_owned(), "info".to_owned())].into(),
            ..Default::default()
        })
        .await?;
    stack.wait_agent_ready(&agent.id, 1).await?;
    stack.manager.kill().await?;
    stack.restart_manager().await?;
    // The agent's own log line of its second session, written into the file
    // it has held open since before the manager died.
    shepherd_testkit::eventually(shepherd_e2e::WAIT, "the reconnect in the logs", || {
        let mut agents = stack.agents.clone();
        let id = agent.id.clone();
        async move {
            let logs = agents
                .get_agent_logs(am::GetAgentLogsRequest {
                    agent_id: id,
                    stream: am::LogStream::Stderr as i32,
                    tail_lines: 1000,
                })
                .await?
                .into_inner();
            let sessions = logs
                .lines
                .iter()
                .filter(|line| line.contains("session open"))
                .count();
            Ok((sessions >= 2).then_some(()))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_agent_that_died_while_its_manager_was_down_is_restarted() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("mortal", am::RestartMode::OnFailure)
        .await?;
    stack.wait_agent_ready(&agent.id, 1).await?;
    let pid = stack.agent(&agent.id).await?.pid;
    stack.manager.kill().await?;
    shepherd_e2e::kill9(-pid)?;
    shepherd_testkit::eventually(shepherd_e2e::WAIT, "the agent to die", || async {
        Ok((!shepherd_testkit::process_alive(pid)).then_some(()))
    })
    .await?;
    stack.restart_manager().await?;
    // Nothing to adopt: relaunched through the one launch path.
    stack.wait_agent_ready(&agent.id, 2).await?;
    let events = stack.agent_events(&agent.id).await?;
    assert!(
        events
            .iter()
            .any(|event| matches!(event.kind, Some(agent_event::Kind::Restarted(_)))),
        "{events:?}"
    );
    Ok(())
}
