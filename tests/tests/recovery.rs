//! The story Shepherd exists for: an agent crashes, its runners give up
//! after the startup window, the agent is restarted by some path, and every
//! enabled workflow runs again — exactly once, with no task lost or run
//! twice. Each recovery mechanism is exercised on its own.

use std::collections::BTreeMap;
use std::time::Duration;

use shepherd_e2e::{Stack, StackOptions, kill9, lines};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, RunnerState, TaskState};

/// A template whose tasks append their title to `file`, so a test can count
/// how often each task ran.
fn recording(file: &std::path::Path) -> String {
    format!("echo {{{{title}}}} >> {}", file.display())
}

fn counts(lines: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        *counts.entry(line.clone()).or_insert(0) += 1;
    }
    counts
}

/// Agent with two enabled workflows and one disabled; returns them.
async fn seed(
    stack: &mut Stack,
) -> anyhow::Result<(am::Agent, Vec<sched::Workflow>, std::path::PathBuf)> {
    let agent = stack.create_agent("seed", am::RestartMode::Never).await?;
    let file = stack.scratch_file("runs.log");
    let template = recording(&file);
    let mut workflows = Vec::new();
    for (name, enabled) in [("first", true), ("second", true), ("parked", false)] {
        workflows.push(
            stack
                .create_workflow(name, &agent.id, enabled, &template)
                .await?,
        );
    }
    for workflow in &workflows[..2] {
        stack
            .wait_runner(&workflow.id, RunnerState::Running, "")
            .await?;
    }
    Ok((agent, workflows, file))
}

/// Crash the agent (policy never: it stays down) and wait for the enabled
/// workflows' runners to give up.
async fn crash_and_wait_for_runners_to_give_up(
    stack: &mut Stack,
    agent: &am::Agent,
    workflows: &[sched::Workflow],
) -> anyhow::Result<()> {
    let pid = stack.agent(&agent.id).await?.pid;
    kill9(pid)?;
    for workflow in &workflows[..2] {
        stack
            .wait_runner(&workflow.id, RunnerState::Stopped, "agent not ready")
            .await?;
    }
    Ok(())
}

async fn queue(
    stack: &mut Stack,
    workflows: &[sched::Workflow],
    per_workflow: usize,
) -> anyhow::Result<Vec<Vec<String>>> {
    let mut ids = Vec::new();
    for workflow in workflows {
        let mut tasks = Vec::new();
        for i in 0..per_workflow {
            let title = format!("{}-{i}", workflow.name);
            tasks.push(stack.trigger(&workflow.id, &title, &title).await?.id);
        }
        ids.push(tasks);
    }
    Ok(ids)
}

/// After recovery: both enabled workflows run, the disabled one does not,
/// every queued task of the enabled ones ran exactly once.
async fn assert_recovered(
    stack: &mut Stack,
    workflows: &[sched::Workflow],
    tasks: &[Vec<String>],
    file: &std::path::Path,
) -> anyhow::Result<()> {
    for workflow in &workflows[..2] {
        stack
            .wait_runner(&workflow.id, RunnerState::Running, "")
            .await?;
    }
    let enabled: Vec<String> = tasks[..2].concat();
    let done = stack.wait_tasks(&enabled, TaskState::Succeeded).await?;
    assert!(done.iter().all(|t| t.attempts == 1), "{done:?}");
    let ran = counts(&lines(file));
    for task in &done {
        let title = &task.fields.as_ref().expect("fields").title;
        assert_eq!(
            ran.get(title),
            Some(&1),
            "{title} ran {:?} times",
            ran.get(title)
        );
    }
    // The disabled workflow's tasks are stored, not run.
    let parked = stack.runners("").await?;
    let parked = parked
        .iter()
        .find(|r| r.workflow_id == workflows[2].id)
        .expect("runner row");
    assert_eq!(parked.state(), RunnerState::Stopped);
    assert_eq!(parked.starts, 0);
    for id in &tasks[2] {
        let task = stack
            .workflows
            .get_task(sched::GetTaskRequest {
                task_id: id.clone(),
            })
            .await?
            .into_inner();
        assert_eq!(task.state(), TaskState::Pending);
    }
    assert!(!ran.keys().any(|title| title.starts_with("parked")));
    Ok(())
}

#[tokio::test]
async fn seed_scenario_restart_agent_brings_every_enabled_workflow_back() -> anyhow::Result<()> {
    // Level passes off: only the AgentRestarted edge can heal the runners.
    let mut stack = Stack::start(StackOptions {
        level: false,
        ..Default::default()
    })
    .await?;
    let (agent, workflows, file) = seed(&mut stack).await?;
    crash_and_wait_for_runners_to_give_up(&mut stack, &agent, &workflows).await?;
    let tasks = queue(&mut stack, &workflows, 3).await?;

    let restarted = stack.restart_agent(&agent.id).await?;
    assert_eq!(restarted.generation, 2);
    assert_recovered(&mut stack, &workflows, &tasks, &file).await?;
    for runner in stack
        .runners(&agent.id)
        .await?
        .iter()
        .filter(|r| r.workflow_id != workflows[2].id)
    {
        assert_eq!(
            runner.starts, 2,
            "one start at creation, exactly one after the restart"
        );
    }
    Ok(())
}

#[tokio::test]
async fn duplicate_restarts_racing_reconciles_and_enables_start_one_runner() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        reconcile_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .await?;
    let (agent, workflows, _) = seed(&mut stack).await?;
    crash_and_wait_for_runners_to_give_up(&mut stack, &agent, &workflows).await?;

    // The same recovery from every side at once: two restarts (two
    // AgentRestarted events), enables of both workflows racing them, and a
    // level pass every 50 ms.
    let mut enables = Vec::new();
    for workflow in &workflows[..2] {
        for _ in 0..4 {
            let mut client = stack.workflows.clone();
            let id = workflow.id.clone();
            enables.push(tokio::spawn(async move {
                client
                    .update_workflow(sched::UpdateWorkflowRequest {
                        workflow: Some(sched::Workflow {
                            id,
                            enabled: true,
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["enabled".into()],
                        }),
                    })
                    .await
            }));
        }
    }
    stack.restart_agent(&agent.id).await?;
    stack.restart_agent(&agent.id).await?;
    for enable in enables {
        enable.await??;
    }
    stack.wait_agent_ready(&agent.id, 3).await?;

    // Tasks that would overlap if two runners fed one workflow (max
    // concurrency 1): each takes a lock directory; a taken lock is an
    // overlap.
    let overlaps = stack.scratch_file("overlaps.log");
    let runs = stack.scratch_file("runs.log");
    for workflow in &workflows[..2] {
        let lock = stack.scratch_file(&format!("{}.lock", workflow.name));
        let template = format!(
            "mkdir {lock} || echo {{{{title}}}} >> {overlaps}; echo {{{{title}}}} >> {runs}; sleep 0.05; rmdir {lock}",
            lock = lock.display(),
            overlaps = overlaps.display(),
            runs = runs.display()
        );
        stack
            .workflows
            .update_workflow(sched::UpdateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    id: workflow.id.clone(),
                    prompt_template: template,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["prompt_template".into()],
                }),
            })
            .await?;
    }
    let tasks = queue(&mut stack, &workflows[..2], 8).await?;
    let done = stack
        .wait_tasks(&tasks.concat(), TaskState::Succeeded)
        .await?;
    assert_eq!(done.len(), 16);
    assert!(
        lines(&overlaps).is_empty(),
        "tasks of one workflow overlapped: {:?}",
        lines(&overlaps)
    );
    let ran = counts(&lines(&runs));
    assert_eq!(ran.len(), 16);
    assert!(ran.values().all(|n| *n == 1), "{ran:?}");

    for workflow in &workflows[..2] {
        let runners = stack.runners(&agent.id).await?;
        let runner = runners
            .iter()
            .find(|r| r.workflow_id == workflow.id)
            .expect("runner");
        assert_eq!(runner.state(), RunnerState::Running);
        assert_eq!(
            runner.starts, 2,
            "exactly one runner was started by the whole storm"
        );
    }
    Ok(())
}

#[tokio::test]
async fn restart_missed_while_scheduler_down_is_recovered_by_resume() -> anyhow::Result<()> {
    // Level passes off: only resuming the stream from the saved cursor can
    // tell the new scheduler about the restart.
    let mut stack = Stack::start(StackOptions {
        level: false,
        ..Default::default()
    })
    .await?;
    let (agent, workflows, file) = seed(&mut stack).await?;
    crash_and_wait_for_runners_to_give_up(&mut stack, &agent, &workflows).await?;
    let tasks = queue(&mut stack, &workflows, 2).await?;

    stack.kill_scheduler().await?;
    stack.restart_agent(&agent.id).await?;
    stack.wait_agent_ready(&agent.id, 2).await?;
    stack.start_scheduler().await?;

    assert_recovered(&mut stack, &workflows, &tasks, &file).await
}

#[tokio::test]
async fn restart_missed_and_pruned_is_recovered_by_resync_and_level() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let (agent, workflows, file) = seed(&mut stack).await?;
    crash_and_wait_for_runners_to_give_up(&mut stack, &agent, &workflows).await?;
    let tasks = queue(&mut stack, &workflows, 2).await?;

    stack.kill_scheduler().await?;
    stack.restart_agent(&agent.id).await?;
    stack.wait_agent_ready(&agent.id, 2).await?;
    // Everything the scheduler has not seen is gone from the log.
    let pruned = stack
        .agents
        .prune_events(am::PruneEventsRequest {
            through_sequence: u64::MAX,
        })
        .await?
        .into_inner();
    assert!(pruned.deleted > 0);
    stack.start_scheduler().await?;

    assert_recovered(&mut stack, &workflows, &tasks, &file).await
}

#[tokio::test]
async fn manager_restarted_under_a_running_scheduler_heals_runners() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        level: false,
        // The opt-out of live restore: the new manager replaces the agents.
        env: vec![("LIVE_RESTORE", "false".into())],
        ..Default::default()
    })
    .await?;
    let (agent, workflows, file) = seed(&mut stack).await?;

    // A clean restart of the manager: the stream breaks, agents stop, the
    // new manager restarts them (AgentRestarted), the scheduler reconnects.
    stack.manager.terminate().await?;
    stack.restart_manager().await?;
    stack.wait_agent_ready(&agent.id, 2).await?;
    let tasks = queue(&mut stack, &workflows, 2).await?;
    assert_recovered(&mut stack, &workflows, &tasks, &file).await
}

#[tokio::test]
async fn manager_killed_and_reconciled_heals_runners() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        level: false,
        // The opt-out of live restore: the new manager replaces the agents.
        env: vec![("LIVE_RESTORE", "false".into())],
        ..Default::default()
    })
    .await?;
    let (agent, workflows, file) = seed(&mut stack).await?;
    crash_and_wait_for_runners_to_give_up(&mut stack, &agent, &workflows).await?;
    let tasks = queue(&mut stack, &workflows, 2).await?;

    // The manager crashes; its start-up reconciliation restarts the agent
    // (desired: running) through the one restart path.
    stack.manager.kill().await?;
    stack.restart_manager().await?;
    stack.wait_agent_ready(&agent.id, 2).await?;
    assert_recovered(&mut stack, &workflows, &tasks, &file).await
}

#[tokio::test]
async fn a_task_lost_mid_run_is_retried_and_completes_once() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("flaky", am::RestartMode::OnFailure)
        .await?;
    let started = stack.scratch_file("started.log");
    let template = format!(
        "echo {{{{title}}}} >> {}; sleep {{{{body}}}}",
        started.display()
    );
    let workflow = stack
        .create_workflow("retried", &agent.id, true, &template)
        .await?;
    stack
        .wait_runner(&workflow.id, RunnerState::Running, "")
        .await?;

    let task = stack
        .workflows
        .trigger_workflow(sched::TriggerWorkflowRequest {
            workflow_id: workflow.id.clone(),
            idempotency_key: "slow".into(),
            fields: Some(sched::TaskFields {
                title: "slow".into(),
                body: "2".into(),
                ..Default::default()
            }),
            timeout: None,
            priority: 0,
        })
        .await?
        .into_inner();
    shepherd_testkit::eventually(shepherd_e2e::WAIT, "the task to start", || async {
        Ok((!lines(&started).is_empty()).then_some(()))
    })
    .await?;
    let pid = stack.agent(&agent.id).await?.pid;
    kill9(pid)?;

    // Lost with the agent, retried on the restarted agent, done.
    let done = stack
        .wait_tasks(std::slice::from_ref(&task.id), TaskState::Succeeded)
        .await?;
    assert_eq!(done[0].attempts, 2);
    assert_eq!(
        lines(&started),
        ["slow", "slow"],
        "first attempt lost, second ran"
    );
    Ok(())
}
