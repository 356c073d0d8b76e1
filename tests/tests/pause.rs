//! Pausing a workflow stops its dispatch without stopping its agent: the
//! ticks of its schedule meanwhile are recorded as skipped (never run) or
//! queued (run after the resume, once each).

use shepherd_e2e::{Stack, StackOptions, WAIT, lines, wait_lines};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, TaskState};
use shepherd_testkit::eventually;

/// An agent and an enabled workflow ticking every second, whose tasks
/// append their title to the returned file; one tick has run.
async fn ticking(stack: &mut Stack) -> anyhow::Result<(sched::Workflow, std::path::PathBuf)> {
    let agent = stack
        .create_agent("ticker", am::RestartMode::OnFailure)
        .await?;
    let log = stack.scratch_file("ticks.log");
    let workflow = stack
        .workflows
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: "tick".into(),
                agent_id: agent.id,
                enabled: true,
                trigger: Some(sched::Trigger {
                    kind: Some(sched::trigger::Kind::Interval(sched::IntervalTrigger {
                        policy: None,
                        period: Some(prost_types::Duration {
                            seconds: 1,
                            nanos: 0,
                        }),
                    })),
                }),
                prompt_template: format!("echo {{{{title}}}} >> {}", log.display()),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    wait_lines(&log, 1).await?;
    Ok((workflow, log))
}

async fn tasks_in(
    stack: &Stack,
    workflow: &str,
    state: TaskState,
) -> anyhow::Result<Vec<sched::Task>> {
    Ok(stack
        .workflows
        .clone()
        .list_tasks(sched::ListTasksRequest {
            workflow_id: workflow.into(),
            state: state as i32,
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner()
        .tasks)
}

/// Waits until the workflow has at least `count` tasks in `state`.
async fn wait_tasks_in(
    stack: &Stack,
    workflow: &str,
    state: TaskState,
    count: usize,
) -> anyhow::Result<Vec<sched::Task>> {
    eventually(WAIT, &format!("{count} tasks {state:?}"), || async {
        let tasks = tasks_in(stack, workflow, state).await?;
        Ok((tasks.len() >= count).then_some(tasks))
    })
    .await
}

fn title(task: &sched::Task) -> String {
    task.fields
        .as_ref()
        .map(|f| f.title.clone())
        .unwrap_or_default()
}

async fn pause(
    stack: &Stack,
    workflow: &str,
    mode: sched::WhilePaused,
) -> anyhow::Result<sched::Workflow> {
    Ok(stack
        .workflows
        .clone()
        .pause_workflow(sched::PauseWorkflowRequest {
            workflow_id: workflow.into(),
            reason: "provider outage".into(),
            while_paused: mode as i32,
        })
        .await?
        .into_inner())
}

async fn resume(stack: &Stack, workflow: &str) -> anyhow::Result<()> {
    stack
        .workflows
        .clone()
        .resume_workflow(sched::ResumeWorkflowRequest {
            workflow_id: workflow.into(),
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn ticks_while_paused_with_skip_are_recorded_skipped_and_never_run() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let (workflow, log) = ticking(&mut stack).await?;
    let paused = pause(&stack, &workflow.id, sched::WhilePaused::Skip).await?;
    let pause_shown = paused.pause.expect("the pause is shown");
    assert_eq!(pause_shown.reason, "provider outage");
    assert!(
        pause_shown.by.starts_with("anonymous"),
        "{}",
        pause_shown.by
    );
    let diagnosis = stack
        .workflows
        .clone()
        .explain_workflow(sched::ExplainWorkflowRequest {
            workflow_id: workflow.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        diagnosis.verdict(),
        sched::Verdict::Paused,
        "{}",
        diagnosis.summary
    );

    let skipped = wait_tasks_in(&stack, &workflow.id, TaskState::Skipped, 5).await?;
    resume(&stack, &workflow.id).await?;
    // Ticks run again after the resume.
    let ran_before = lines(&log).len();
    wait_lines(&log, ran_before + 1).await?;
    let ran = lines(&log);
    for task in &skipped {
        assert!(
            !ran.contains(&title(task)),
            "skipped tick {} ran",
            title(task)
        );
        assert_eq!(task.attempts, 0, "never dispatched");
        assert!(task.last_error.contains("paused"), "{}", task.last_error);
    }
    Ok(())
}

#[tokio::test]
async fn ticks_while_paused_with_queue_run_after_the_resume_once_each() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let (workflow, log) = ticking(&mut stack).await?;
    pause(&stack, &workflow.id, sched::WhilePaused::Queue).await?;
    let queued = wait_tasks_in(&stack, &workflow.id, TaskState::Pending, 5).await?;
    let ran = lines(&log);
    for task in &queued {
        assert!(
            !ran.contains(&title(task)),
            "{} ran while paused",
            title(task)
        );
    }
    assert!(
        tasks_in(&stack, &workflow.id, TaskState::Skipped)
            .await?
            .is_empty(),
        "nothing skipped in QUEUE mode"
    );
    resume(&stack, &workflow.id).await?;
    let ids: Vec<String> = queued.iter().map(|task| task.id.clone()).collect();
    stack.wait_tasks(&ids, TaskState::Succeeded).await?;
    let ran = lines(&log);
    for task in &queued {
        let times = ran.iter().filter(|line| **line == title(task)).count();
        assert_eq!(times, 1, "{} ran {times} times", title(task));
    }
    // The resumed workflow is no longer paused.
    let shown = stack
        .workflows
        .clone()
        .get_workflow(sched::GetWorkflowRequest {
            workflow_id: workflow.id.clone(),
        })
        .await?
        .into_inner();
    assert!(shown.pause.is_none());
    Ok(())
}

#[tokio::test]
async fn pausing_an_agent_holds_every_workflow_of_it_without_stopping_it() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let (ticking_workflow, log) = ticking(&mut stack).await?;
    let agent_id = ticking_workflow.agent_id.clone();
    let before = stack.agent(&agent_id).await?;

    let pause = stack
        .workflows
        .clone()
        .pause_agent(sched::PauseAgentRequest {
            agent_id: agent_id.clone(),
            reason: "budget review".into(),
        })
        .await?
        .into_inner();
    assert_eq!(pause.reason, "budget review");
    // A workflow made for the paused agent afterwards is held too.
    let later = stack
        .create_workflow(
            "later",
            &agent_id,
            true,
            &format!("echo {{{{title}}}} >> {}", log.display()),
        )
        .await?;
    let later_task = stack.trigger(&later.id, "held", "held").await?.id;
    let diagnosis = stack
        .workflows
        .clone()
        .explain_workflow(sched::ExplainWorkflowRequest {
            workflow_id: later.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        diagnosis.verdict(),
        sched::Verdict::Paused,
        "{}",
        diagnosis.summary
    );
    assert!(
        diagnosis.summary.contains("budget review"),
        "{}",
        diagnosis.summary
    );
    let listed = stack
        .workflows
        .clone()
        .list_agent_pauses(sched::ListAgentPausesRequest {})
        .await?
        .into_inner()
        .pauses;
    assert_eq!(listed.len(), 1);

    // Three ticks made while paused wait; none ran, nor the later task.
    let held = wait_tasks_in(&stack, &ticking_workflow.id, TaskState::Pending, 3).await?;
    let ran = lines(&log);
    for task in &held {
        assert!(
            !ran.contains(&title(task)),
            "{} ran while paused",
            title(task)
        );
    }
    assert!(
        !ran.contains(&"held".to_owned()),
        "the later workflow's task ran"
    );
    // Its process was never stopped.
    let during = stack.agent(&agent_id).await?;
    assert_eq!(during.status(), am::AgentStatus::Ready);
    assert_eq!(during.generation, before.generation);

    stack
        .workflows
        .clone()
        .resume_agent(sched::ResumeAgentRequest {
            agent_id: agent_id.clone(),
        })
        .await?;
    let mut ids: Vec<String> = held.iter().map(|task| task.id.clone()).collect();
    ids.push(later_task);
    stack.wait_tasks(&ids, TaskState::Succeeded).await?;

    // Refused: an agent the manager does not know, a reason with NUL.
    let unknown = stack
        .workflows
        .clone()
        .pause_agent(sched::PauseAgentRequest {
            agent_id: uuid::Uuid::now_v7().to_string(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let bad = stack
        .workflows
        .clone()
        .pause_agent(sched::PauseAgentRequest {
            agent_id,
            reason: "a\0b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        stack
            .workflows
            .clone()
            .list_agent_pauses(sched::ListAgentPausesRequest {})
            .await?
            .into_inner()
            .pauses
            .is_empty()
    );
    Ok(())
}
