//! Task delivery through real agent sessions, and session authentication.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{Harness, is_ready, kill9, kind, kinds, ready_agent, reference_agent};
use shepherd_proto::agentmanager::v1::{
    self as pb, agent_event::Kind, agent_session_client::AgentSessionClient,
};
use tokio_stream::wrappers::ReceiverStream;

fn dispatch(agent: &str, task: &str, payload: &str) -> pb::DispatchTaskRequest {
    pb::DispatchTaskRequest {
        agent_id: agent.to_owned(),
        task_id: task.to_owned(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// The error a `DispatchTasks` result carries (panics on a dispatch).
fn batch_error(result: &pb::DispatchTaskResult) -> (tonic::Code, &str) {
    match &result.result {
        Some(pb::dispatch_task_result::Result::Error(error)) => {
            (tonic::Code::from(error.code), error.message.as_str())
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

fn batch_dispatched(result: &pb::DispatchTaskResult) -> &pb::DispatchTaskResponse {
    match &result.result {
        Some(pb::dispatch_task_result::Result::Dispatched(response)) => response,
        other => panic!("expected a dispatch, got {other:?}"),
    }
}

/// DispatchTasks answers each task as DispatchTask would, in order: one
/// that fails fails alone, a task named twice is delivered once, and each
/// delivered task runs exactly once.
#[tokio::test]
async fn a_dispatch_batch_answers_each_task_on_its_own() -> anyhow::Result<()> {
    let (mut h, mut events, agent) = ready_agent("worker", pb::RestartMode::Never).await?;
    let unknown = uuid::Uuid::now_v7().to_string();
    let marker = std::env::temp_dir().join(format!("shepherd-batch-{}", h.db.name));
    let payload = |task: &str| format!("echo {task} >> {}", marker.display());
    let tasks = vec![
        dispatch(&agent.id, "batch-1", &payload("batch-1")),
        dispatch(&unknown, "batch-2", "true"),
        dispatch(&agent.id, "", "true"),
        dispatch(&agent.id, "batch-3", &payload("batch-3")),
        dispatch(&agent.id, "batch-1", &payload("batch-1")),
    ];
    let results = h
        .client
        .dispatch_tasks(pb::DispatchTasksRequest { tasks })
        .await?
        .into_inner()
        .results;
    assert_eq!(results.len(), 5, "one result per task");
    let first = batch_dispatched(&results[0]);
    assert_eq!((first.task_id.as_str(), first.attempt), ("batch-1", 1));
    assert_eq!(batch_error(&results[1]).0, tonic::Code::NotFound);
    assert!(batch_error(&results[1]).1.contains(&unknown));
    assert_eq!(batch_error(&results[2]).0, tonic::Code::InvalidArgument);
    assert!(batch_error(&results[2]).1.contains("task_id"));
    assert!(!batch_dispatched(&results[3]).duplicate);
    // The same task twice in one call: whichever ran second found it held.
    assert!(
        first.duplicate != batch_dispatched(&results[4]).duplicate,
        "batch-1 is delivered exactly once: {first:?} / {:?}",
        results[4]
    );

    let mut completed = std::collections::BTreeSet::new();
    while completed.len() < 2 {
        let seen = events.until(|e| kind(e) == "task_completed").await?;
        if let Some(Kind::TaskCompleted(done)) = &seen.last().expect("event").kind {
            assert_eq!(done.outcome(), pb::TaskOutcome::Succeeded);
            completed.insert(done.task_id.clone());
        }
    }
    assert_eq!(
        completed.into_iter().collect::<Vec<_>>(),
        ["batch-1", "batch-3"]
    );
    let mut runs: Vec<String> = std::fs::read_to_string(&marker)?
        .lines()
        .map(str::to_owned)
        .collect();
    let _ = std::fs::remove_file(&marker);
    runs.sort();
    assert_eq!(runs, ["batch-1", "batch-3"], "each task ran exactly once");

    for tasks in [Vec::new(), vec![dispatch(&agent.id, "t", ""); 257]] {
        let status = h
            .client
            .dispatch_tasks(pb::DispatchTasksRequest { tasks })
            .await
            .expect_err("a batch outside 1-256 tasks");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("tasks"), "{status:?}");
    }
    Ok(())
}

/// A task the SDK finishes at once is reported completed only (its report
/// implies acceptance: one message each way, one event); a task that has
/// to wait is accepted first.
#[tokio::test]
async fn only_a_task_that_waits_is_accepted_before_its_report() -> anyhow::Result<()> {
    let (mut h, mut events, agent) = ready_agent("worker", pb::RestartMode::Never).await?;

    // An empty payload: the reference agent has nothing to run.
    h.client
        .dispatch_task(dispatch(&agent.id, "instant", ""))
        .await?;
    let seen = events.until(|e| kind(e) == "task_completed").await?;
    assert_eq!(kinds(&seen), ["task_completed"], "{seen:?}");

    h.client
        .dispatch_task(dispatch(&agent.id, "waits", "sleep 0.1"))
        .await?;
    let seen = events.until(|e| kind(e) == "task_completed").await?;
    assert_eq!(
        kinds(&seen),
        ["task_accepted", "task_completed"],
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn dispatch_is_idempotent_and_the_outcome_arrives_as_an_event() -> anyhow::Result<()> {
    let (mut h, mut events, agent) = ready_agent("worker", pb::RestartMode::Never).await?;

    let marker = std::env::temp_dir().join(format!("shepherd-runs-{}", h.db.name));
    let payload = format!("echo ran >> {}; echo hello from the task", marker.display());
    let first = h
        .client
        .dispatch_task(dispatch(&agent.id, "task-1", &payload))
        .await?
        .into_inner();
    assert!(!first.duplicate);
    assert_eq!(first.attempt, 1);
    let second = h
        .client
        .dispatch_task(dispatch(&agent.id, "task-1", &payload))
        .await?
        .into_inner();
    assert!(second.duplicate, "the same task id is not delivered twice");

    let seen = events.until(|e| kind(e) == "task_completed").await?;
    // The output streams as it comes (a progress event), then the outcome.
    assert_eq!(
        kinds(&seen),
        ["task_accepted", "task_progress", "task_completed"]
    );
    match &seen[1].kind {
        Some(Kind::TaskProgress(progress)) => {
            assert_eq!(progress.task_id, "task-1");
            assert_eq!(progress.attempt, 1);
            assert_eq!(progress.output, "hello from the task\n");
        }
        other => panic!("expected progress, got {other:?}"),
    }
    match &seen[2].kind {
        Some(Kind::TaskCompleted(done)) => {
            assert_eq!(done.task_id, "task-1");
            assert_eq!(done.outcome(), pb::TaskOutcome::Succeeded);
            assert_eq!(done.output.trim(), "hello from the task");
        }
        other => panic!("expected completion, got {other:?}"),
    }
    // Dispatching a finished task again is still a duplicate.
    let third = h
        .client
        .dispatch_task(dispatch(&agent.id, "task-1", &payload))
        .await?
        .into_inner();
    assert!(third.duplicate);
    assert_eq!(third.state(), pb::TaskState::Completed);
    assert!(events.until_idle().await?.is_empty(), "no further events");
    let runs = std::fs::read_to_string(&marker)?;
    let _ = std::fs::remove_file(&marker);
    assert_eq!(runs.lines().count(), 1, "the task ran exactly once");

    // A failing command is reported as a failure with its output.
    h.client
        .dispatch_task(dispatch(&agent.id, "task-2", "echo broken >&2; exit 3"))
        .await?;
    let done = events.until(|e| kind(e) == "task_completed").await?;
    match &done.last().expect("event").kind {
        Some(Kind::TaskCompleted(done)) => {
            assert_eq!(done.outcome(), pb::TaskOutcome::Failed);
            assert!(done.output.contains("broken"), "{}", done.output);
        }
        other => panic!("expected completion, got {other:?}"),
    }
    Ok(())
}

/// Dispatches that arrive together are claimed together (one statement);
/// a task id repeated among them must still be delivered exactly once, and
/// every other task exactly once too.
#[tokio::test]
async fn concurrent_dispatches_deliver_each_task_exactly_once() -> anyhow::Result<()> {
    let (h, mut events, agent) = ready_agent("busy", pb::RestartMode::Never).await?;

    let marker = std::env::temp_dir().join(format!("shepherd-same-{}", h.db.name));
    let same = format!("echo ran >> {}", marker.display());
    let calls = (0..20)
        .map(|_| dispatch(&agent.id, "same", &same))
        .chain((0..30).map(|n| dispatch(&agent.id, &format!("distinct-{n}"), "true")))
        .map(|request| {
            let mut client = h.client.clone();
            async move { client.dispatch_task(request).await }
        });
    let responses = futures_util::future::join_all(calls).await;
    let mut first_deliveries = Vec::new();
    for response in responses {
        let response = response?.into_inner();
        if !response.duplicate {
            assert_eq!(response.attempt, 1, "{response:?}");
            first_deliveries.push(response.task_id);
        }
    }
    first_deliveries.sort();
    let mut expected: Vec<String> = std::iter::once("same".to_owned())
        .chain((0..30).map(|n| format!("distinct-{n}")))
        .collect();
    expected.sort();
    assert_eq!(first_deliveries, expected, "each task delivered once");

    let mut completed = std::collections::BTreeMap::new();
    while completed.len() < expected.len() {
        let seen = events.until(|e| kind(e) == "task_completed").await?;
        if let Some(Kind::TaskCompleted(done)) = &seen.last().expect("event").kind {
            *completed.entry(done.task_id.clone()).or_insert(0) += 1;
        }
    }
    assert!(completed.values().all(|&n| n == 1), "{completed:?}");
    assert!(
        events
            .until_idle()
            .await?
            .iter()
            .all(|e| kind(e) != "task_completed"),
        "no task completes twice"
    );
    let runs = std::fs::read_to_string(&marker)?;
    let _ = std::fs::remove_file(&marker);
    assert_eq!(
        runs.lines().count(),
        1,
        "the repeated task ran exactly once"
    );
    Ok(())
}

#[tokio::test]
async fn a_repeated_dispatch_reports_an_accepted_task_as_accepted() -> anyhow::Result<()> {
    let (mut h, mut events, agent) = ready_agent("steady", pb::RestartMode::Never).await?;

    h.client
        .dispatch_task(dispatch(&agent.id, "slow", "sleep 2"))
        .await?;
    events.until(|e| kind(e) == "task_accepted").await?;
    let again = h
        .client
        .dispatch_task(dispatch(&agent.id, "slow", "sleep 2"))
        .await?
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.state(), pb::TaskState::Accepted, "{again:?}");

    events.until(|e| kind(e) == "task_completed").await?;
    let done = h
        .client
        .dispatch_task(dispatch(&agent.id, "slow", "sleep 2"))
        .await?
        .into_inner();
    assert_eq!(done.state(), pb::TaskState::Completed, "{done:?}");
    Ok(())
}

#[tokio::test]
async fn killing_the_agent_mid_task_loses_the_task_and_it_can_be_redelivered() -> anyhow::Result<()>
{
    let (mut h, mut events, agent) = ready_agent("fragile", pb::RestartMode::OnFailure).await?;

    h.client
        .dispatch_task(dispatch(&agent.id, "long", "sleep 30"))
        .await?;
    events.until(|e| kind(e) == "task_accepted").await?;
    kill9(agent.pid);

    let seen = events.until(|e| kind(e) == "task_lost").await?;
    match &seen.last().expect("event").kind {
        Some(Kind::TaskLost(lost)) => {
            assert_eq!(lost.task_id, "long");
            assert_eq!(lost.attempt, 1);
        }
        other => panic!("expected task lost, got {other:?}"),
    }
    // The session's end (which loses the task) and the process exit race;
    // both happen before the relaunch.
    let mut rest = seen;
    rest.extend(events.until(|e| kind(e) == "started").await?);
    let names = kinds(&rest);
    assert!(
        names.contains(&"exited") && names.contains(&"disconnected"),
        "{names:?}"
    );

    // Once the agent is back, the lost task may be delivered again.
    events.until(|e| is_ready(e) && e.generation == 2).await?;
    let again = h
        .client
        .dispatch_task(dispatch(&agent.id, "long", "echo second try"))
        .await?
        .into_inner();
    assert!(!again.duplicate);
    assert_eq!(again.attempt, 2);
    let done = events.until(|e| kind(e) == "task_completed").await?;
    assert_eq!(done.last().expect("event").generation, 2);
    Ok(())
}

#[tokio::test]
async fn dispatch_to_an_agent_that_is_not_ready_fails_precondition() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut agent = reference_agent("idle", pb::RestartMode::Never);
    agent.desired_state = pb::DesiredState::Stopped as i32;
    let agent = h.create(agent).await?;
    assert_eq!(agent.status(), pb::AgentStatus::Pending);
    let err = h
        .client
        .dispatch_task(dispatch(&agent.id, "t", "true"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("not ready"), "{}", err.message());
    Ok(())
}

/// A reference agent whose launching shell writes the session token the
/// manager gives each generation to `<dir>/token-<generation>` before it
/// becomes the agent (which takes the token out of its environment: the
/// test plays a holder of the token, not a reader of the agent's memory).
fn agent_telling_its_token(name: &str, dir: &std::path::Path) -> pb::Agent {
    let mut agent = reference_agent(name, pb::RestartMode::Never);
    let script = format!(
        "printf %s \"$SHEPHERD_SESSION_TOKEN\" > {}/token-$SHEPHERD_GENERATION; exec {}",
        dir.display(),
        agent.command
    );
    agent.command = "/bin/sh".to_owned();
    agent.args = vec!["-c".to_owned(), script];
    agent
}

/// The session token of `generation`, as the agent's shell wrote it.
fn token_of(dir: &std::path::Path, generation: u64) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(
        dir.join(format!("token-{generation}")),
    )?)
}

async fn open_session(h: &Harness, agent_id: &str, token: &str) -> Result<(), tonic::Status> {
    let channel = shepherd_testkit::channel(&h.manager.url())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = AgentSessionClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            agent_id: agent_id.to_owned(),
            session_token: token.to_owned(),
            held_tasks: Vec::new(),
            instance_id: String::new(),
        })),
    })
    .await
    .map_err(|_| tonic::Status::internal("send"))?;
    let mut stream = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    // Accepted sessions start with Welcome.
    match stream.message().await? {
        Some(pb::ManagerMessage {
            kind: Some(pb::manager_message::Kind::Welcome(_)),
        }) => Ok(()),
        other => Err(tonic::Status::internal(format!(
            "expected welcome, got {other:?}"
        ))),
    }
}

#[tokio::test]
async fn sessions_with_wrong_or_stale_tokens_are_refused() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut events = h.watch(0, "").await?;
    let dir = std::env::temp_dir().join(format!("shepherd-tokens-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let agent = h.create(agent_telling_its_token("guarded", &dir)).await?;
    events.until(is_ready).await?;
    let first_token = token_of(&dir, 1)?;

    let err = open_session(&h, &agent.id, "not-the-token")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = open_session(&h, "not-a-uuid", &first_token)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    h.client
        .restart_agent(pb::RestartAgentRequest {
            agent_id: agent.id.clone(),
        })
        .await?;
    events.until(|e| is_ready(e) && e.generation == 2).await?;
    let err = open_session(&h, &agent.id, &first_token).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "generation 1's token is stale"
    );

    // A valid token of the current generation wins over the older session.
    open_session(&h, &agent.id, &token_of(&dir, 2)?).await?;
    let seen = events.until(is_ready).await?;
    assert_eq!(seen.last().expect("event").generation, 2);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn agent_logs_are_captured() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut events = h.watch(0, "").await?;
    let mut spec = reference_agent("chatty", pb::RestartMode::Never);
    spec.env.insert("RUST_LOG".into(), "info".into());
    let agent = h.create(spec).await?;
    events.until(is_ready).await?;
    let logs = shepherd_testkit::eventually(common::WAIT, "agent log lines", || {
        let mut client = h.client.clone();
        let id = agent.id.clone();
        async move {
            let lines = client
                .get_agent_logs(pb::GetAgentLogsRequest {
                    agent_id: id,
                    stream: pb::LogStream::Stderr as i32,
                    tail_lines: 50,
                })
                .await?
                .into_inner()
                .lines;
            Ok(lines.iter().any(|l| l.contains("ready")).then_some(lines))
        }
    })
    .await?;
    assert!(
        logs.iter().any(|l| l.contains("shepherd-agent starting")),
        "{logs:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_silent_agent_is_disconnected_by_heartbeat_timeout_and_comes_back() -> anyhow::Result<()>
{
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let (mut h, mut events, agent) = ready_agent("sleepy", pb::RestartMode::Never).await?;

    // Frozen, the process keeps its connection open but sends nothing: only
    // the heartbeat timeout can notice.
    kill(Pid::from_raw(agent.pid), Signal::SIGSTOP)?;
    let seen = events.until(|e| kind(e) == "disconnected").await;
    kill(Pid::from_raw(agent.pid), Signal::SIGCONT)?;
    let seen = seen?;
    match &seen.last().expect("event").kind {
        Some(Kind::Disconnected(d)) => assert!(d.reason.contains("no heartbeat"), "{}", d.reason),
        other => panic!("expected disconnected, got {other:?}"),
    }
    assert_eq!(h.get(&agent.id).await?.status(), pb::AgentStatus::Starting);

    // Thawed, the agent reconnects with its (still valid) token.
    events.until(is_ready).await?;
    let back = h.get(&agent.id).await?;
    assert_eq!(back.status(), pb::AgentStatus::Ready);
    assert_eq!(back.generation, 1, "same process, same generation");
    Ok(())
}
