//! WatchTasks: every change of a task in commit order, with the agent's
//! progress and output, resumable from a cursor across scheduler restarts
//! with no gap and no duplicate.

use shepherd_e2e::{AuthChannel, Stack, StackOptions, WAIT};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{
    self as sched, RunnerState, TaskState, scheduler_client::SchedulerClient, watch_tasks_response,
};

type Client = SchedulerClient<AuthChannel>;

/// Reads task events from `after` until `done` says the events so far are
/// enough; fails past the deadline.
async fn watch_until(
    client: &Client,
    request: sched::WatchTasksRequest,
    done: impl Fn(&[sched::TaskEvent]) -> bool,
) -> anyhow::Result<Vec<sched::TaskEvent>> {
    let mut stream = client.clone().watch_tasks(request).await?.into_inner();
    let mut events = Vec::new();
    let read = async {
        while !done(&events) {
            let Some(message) = stream.message().await? else {
                anyhow::bail!("the stream ended");
            };
            if let Some(watch_tasks_response::Kind::Event(event)) = message.kind {
                events.push(event);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(WAIT, read).await {
        Ok(result) => result?,
        Err(_) => anyhow::bail!(
            "timed out after {} events: {:?}",
            events.len(),
            shape(&events)
        ),
    }
    Ok(events)
}

fn finished(events: &[sched::TaskEvent], tasks: &[String]) -> bool {
    tasks.iter().all(|task| {
        events
            .iter()
            .any(|e| &e.task_id == task && e.state() == TaskState::Succeeded)
    })
}

/// (task, state, progress?) of each event: what a gap or a duplicate would
/// change.
fn shape(events: &[sched::TaskEvent]) -> Vec<(String, i32, u32, bool)> {
    events
        .iter()
        .map(|e| (e.task_id.clone(), e.state, e.attempt, e.progress.is_some()))
        .collect()
}

#[tokio::test]
async fn a_watched_task_shows_each_change_with_its_progress_and_output() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("reporter", am::RestartMode::Never)
        .await?;
    let workflow = stack
        .create_workflow(
            "reporting",
            &agent.id,
            true,
            "echo '::progress 0.5 halfway there'; echo hello {{title}}",
        )
        .await?;
    stack
        .wait_runner(&workflow.id, RunnerState::Running, "")
        .await?;
    let task = stack.trigger(&workflow.id, "one", "world").await?;

    let request = sched::WatchTasksRequest {
        task_id: task.id.clone(),
        ..Default::default()
    };
    let events = watch_until(&stack.workflows, request, |events| {
        finished(events, std::slice::from_ref(&task.id))
    })
    .await?;
    let states: Vec<TaskState> = events
        .iter()
        .filter(|e| e.progress.is_none())
        .map(|e| e.state())
        .collect();
    assert_eq!(
        states,
        [
            TaskState::Pending,
            TaskState::Dispatched,
            TaskState::Succeeded
        ]
    );
    let progress: Vec<&sched::TaskProgress> =
        events.iter().filter_map(|e| e.progress.as_ref()).collect();
    let halfway = progress
        .iter()
        .find(|p| p.message == "halfway there")
        .expect("the progress line");
    assert!((halfway.fraction - 0.5).abs() < 1e-6, "{halfway:?}");
    assert!(
        progress.iter().any(|p| p.output == "hello world\n"),
        "the output streams as it comes: {progress:?}"
    );
    // Progress belongs to the running attempt, between dispatch and the end.
    let dispatched = events
        .iter()
        .position(|e| e.state() == TaskState::Dispatched && e.progress.is_none())
        .expect("dispatched");
    let first_progress = events
        .iter()
        .position(|e| e.progress.is_some())
        .expect("progress");
    assert!(dispatched < first_progress);
    // The progress line is not part of the task's output.
    let done = stack
        .workflows
        .get_task(sched::GetTaskRequest {
            task_id: task.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(done.output, "hello world\n");
    // Cursors only grow.
    assert!(
        events
            .windows(2)
            .all(|pair| cursor(&pair[0]) < cursor(&pair[1])),
        "{events:?}"
    );
    Ok(())
}

fn cursor(event: &sched::TaskEvent) -> (u64, i64) {
    let (xid, n) = event.cursor.split_once('.').expect("a cursor");
    (xid.parse().expect("xid"), n.parse().expect("n"))
}

#[tokio::test]
async fn watching_resumes_after_a_scheduler_restart_with_no_gap_and_no_duplicate()
-> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack.create_agent("steady", am::RestartMode::Never).await?;
    let workflow = stack
        .create_workflow("steady", &agent.id, true, "echo {{title}}")
        .await?;
    stack
        .wait_runner(&workflow.id, RunnerState::Running, "")
        .await?;
    let only_this = |after: String| sched::WatchTasksRequest {
        after_cursor: after,
        workflow_id: workflow.id.clone(),
        task_id: String::new(),
    };

    let mut first = Vec::new();
    for n in 0..5 {
        first.push(stack.trigger(&workflow.id, &format!("a{n}"), "a").await?.id);
    }
    let before = watch_until(&stack.workflows, only_this(String::new()), |events| {
        finished(events, &first)
    })
    .await?;
    let resume_at = before.last().expect("events").cursor.clone();

    // The scheduler dies; work goes on through a new one.
    stack.kill_scheduler().await?;
    stack.start_scheduler().await?;
    let mut second = Vec::new();
    for n in 0..5 {
        second.push(stack.trigger(&workflow.id, &format!("b{n}"), "b").await?.id);
    }
    let after = watch_until(&stack.workflows, only_this(resume_at), |events| {
        finished(events, &second)
    })
    .await?;
    assert!(
        after.iter().all(|e| second.contains(&e.task_id)),
        "nothing before the cursor comes again: {after:?}"
    );

    // Resumed, the two halves are exactly what one uninterrupted watch sees.
    let mut all = first.clone();
    all.extend(second.iter().cloned());
    let whole = watch_until(&stack.workflows, only_this(String::new()), |events| {
        finished(events, &all)
    })
    .await?;
    let mut resumed = shape(&before);
    resumed.extend(shape(&after));
    assert_eq!(resumed, shape(&whole), "no gap, no duplicate");
    for task in &all {
        let states: Vec<i32> = whole
            .iter()
            .filter(|e| &e.task_id == task && e.progress.is_none())
            .map(|e| e.state)
            .collect();
        assert_eq!(
            states,
            [
                TaskState::Pending as i32,
                TaskState::Dispatched as i32,
                TaskState::Succeeded as i32
            ],
            "{task}"
        );
    }

    // A cursor that is not one is refused, not guessed at.
    let status = stack
        .workflows
        .watch_tasks(only_this("not-a-cursor".into()))
        .await
        .expect_err("a bad cursor");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    Ok(())
}
