//! Agent lifecycle against real processes: create, crash, policy restart,
//! RestartAgent, stop, delete, and recovery after the manager is killed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{Harness, is_ready, kill9, kind, kinds, reference_agent};
use shepherd_proto::agentmanager::v1::{self as pb, agent_event::Kind};
use shepherd_testkit::{eventually, process_alive};

#[tokio::test]
async fn create_emits_created_started_ready_in_order() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut events = h.watch(0, "").await?;
    let agent = h
        .create(reference_agent("alpha", pb::RestartMode::OnFailure))
        .await?;
    assert_eq!(agent.generation, 1);
    assert!(agent.pid > 0);

    let seen = events.until(is_ready).await?;
    assert_eq!(kinds(&seen), ["created", "started", "ready"]);
    assert!(seen.iter().all(|e| e.agent_id == agent.id));
    let seqs: Vec<u64> = seen.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, [1, 2, 3], "sequence numbers start at 1 with no gap");
    match &seen[1].kind {
        Some(Kind::Started(started)) => assert_eq!(started.pid, agent.pid),
        other => panic!("expected started, got {other:?}"),
    }

    let agent = h.get(&agent.id).await?;
    assert_eq!(agent.status(), pb::AgentStatus::Ready);
    Ok(())
}

#[tokio::test]
async fn kill_9_with_on_failure_restarts_with_next_generation() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut events = h.watch(0, "").await?;
    let agent = h
        .create(reference_agent("crashy", pb::RestartMode::OnFailure))
        .await?;
    events.until(is_ready).await?;

    kill9(agent.pid);
    let seen = events.until(is_ready).await?;
    let names = kinds(&seen);
    // The process exit and the session's end race each other; both come
    // before the relaunch.
    let started = names.iter().position(|k| *k == "started").expect("started");
    let mut before: Vec<&str> = names[..started].to_vec();
    before.sort_unstable();
    assert_eq!(before, ["disconnected", "exited"], "got {names:?}");
    let exited = seen.iter().find(|e| kind(e) == "exited").expect("exited");
    match &exited.kind {
        Some(Kind::Exited(exited)) => {
            assert_eq!(exited.signal, Some(9));
            assert_eq!(exited.code, None);
        }
        other => panic!("expected exited, got {other:?}"),
    }
    let restarted: Vec<_> = seen
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Restarted(r)) => Some(r.generation),
            _ => None,
        })
        .collect();
    assert_eq!(
        restarted,
        [2],
        "exactly one restart, to generation 2: {names:?}"
    );
    let ready = seen.last().expect("ready");
    assert_eq!(ready.generation, 2);

    let after = h.get(&agent.id).await?;
    assert_eq!(after.generation, 2);
    assert_ne!(after.pid, agent.pid);
    assert_eq!(after.status(), pb::AgentStatus::Ready);
    Ok(())
}

#[tokio::test]
async fn policy_never_leaves_a_crashed_agent_exited() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut events = h.watch(0, "").await?;
    let agent = h
        .create(reference_agent("stays-down", pb::RestartMode::Never))
        .await?;
    events.until(is_ready).await?;

    kill9(agent.pid);
    events.until(|e| kind(e) == "exited").await?;
    // The stream goes idle without a restart.
    let rest = events.until_idle().await?;
    assert!(
        !kinds(&rest).contains(&"restarted") && !kinds(&rest).contains(&"started"),
        "{:?}",
        kinds(&rest)
    );
    let after = h.get(&agent.id).await?;
    assert_eq!(after.status(), pb::AgentStatus::Exited);
    assert_eq!(after.desired_state(), pb::DesiredState::Running);
    assert_eq!(after.pid, 0);
    Ok(())
}

#[tokio::test]
async fn restart_agent_emits_exactly_one_restarted_with_a_new_pid() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut events = h.watch(0, "").await?;
    let agent = h
        .create(reference_agent("restartable", pb::RestartMode::OnFailure))
        .await?;
    events.until(is_ready).await?;

    let restarted = h
        .client
        .restart_agent(pb::RestartAgentRequest {
            agent_id: agent.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(restarted.generation, agent.generation + 1);
    assert_ne!(restarted.pid, agent.pid);
    assert!(!process_alive(agent.pid) || zombie_or_gone(agent.pid));

    let mut seen = events.until(is_ready).await?;
    seen.extend(events.until_idle().await?);
    let restarts: Vec<u64> = seen
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Restarted(r)) => Some(r.generation),
            _ => None,
        })
        .collect();
    assert_eq!(restarts, [2], "events: {:?}", kinds(&seen));
    // The restart is announced after the new process runs.
    let started = seen
        .iter()
        .position(|e| kind(e) == "started")
        .expect("started");
    let restarted_at = seen
        .iter()
        .position(|e| kind(e) == "restarted")
        .expect("restarted");
    assert!(started < restarted_at);
    Ok(())
}

fn zombie_or_gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.contains(") Z "))
        .unwrap_or(true)
}

#[tokio::test]
async fn stop_start_and_delete() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut events = h.watch(0, "").await?;
    let agent = h
        .create(reference_agent("lifecycle", pb::RestartMode::Always))
        .await?;
    events.until(is_ready).await?;

    let stopped = h
        .client
        .stop_agent(pb::StopAgentRequest {
            agent_id: agent.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(stopped.status(), pb::AgentStatus::Stopped);
    assert_eq!(stopped.desired_state(), pb::DesiredState::Stopped);
    assert_eq!(stopped.pid, 0);
    let seen = events.until(|e| kind(e) == "stopped").await?;
    assert_eq!(kinds(&seen), ["exited", "disconnected", "stopped"]);
    // Policy ALWAYS does not fight a stop.
    assert!(events.until_idle().await?.is_empty());

    let started = h
        .client
        .start_agent(pb::StartAgentRequest {
            agent_id: agent.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(started.generation, 2);
    let seen = events.until(is_ready).await?;
    assert_eq!(kinds(&seen), ["started", "restarted", "ready"]);

    h.client
        .delete_agent(pb::DeleteAgentRequest {
            agent_id: agent.id.clone(),
        })
        .await?;
    let seen = events.until(|e| kind(e) == "deleted").await?;
    assert_eq!(kinds(&seen), ["exited", "disconnected", "deleted"]);
    let status = h.get(&agent.id).await.unwrap_err();
    let status = status.downcast_ref::<tonic::Status>().expect("status");
    assert_eq!(status.code(), tonic::Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn manager_killed_then_started_restarts_its_agents() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut events = h.watch(0, "").await?;
    let mut agents = Vec::new();
    for name in ["one", "two"] {
        let agent = h
            .create(reference_agent(name, pb::RestartMode::Never))
            .await?;
        events.until(is_ready).await?;
        agents.push(agent);
    }
    let stopped = h
        .create(reference_agent("parked", pb::RestartMode::Never))
        .await?;
    events.until(is_ready).await?;
    h.client
        .stop_agent(pb::StopAgentRequest {
            agent_id: stopped.id.clone(),
        })
        .await?;
    let cursor = events
        .until(|e| kind(e) == "stopped")
        .await?
        .last()
        .expect("event")
        .sequence;
    drop(events);

    h.manager.kill().await?;
    h.restart_manager().await?;

    // Every agent that should run is running again, through the restart
    // path, with its orphaned old process gone.
    let mut events = h.watch(cursor, "").await?;
    let mut restarted = std::collections::BTreeSet::new();
    let mut ready = std::collections::BTreeSet::new();
    while ready.len() < agents.len() {
        let event = events.next().await?;
        match kind(&event) {
            "restarted" => {
                restarted.insert(event.agent_id.clone());
            }
            "ready" => {
                ready.insert(event.agent_id.clone());
            }
            _ => {}
        }
    }
    let expected: std::collections::BTreeSet<String> =
        agents.iter().map(|a| a.id.clone()).collect();
    assert_eq!(restarted, expected);
    assert_eq!(ready, expected);
    for agent in &agents {
        let now = h.get(&agent.id).await?;
        assert_eq!(now.generation, agent.generation + 1);
        assert_ne!(now.pid, agent.pid);
        assert!(
            eventually(common::WAIT, "old process to be gone", || async {
                Ok((!process_alive(agent.pid) || zombie_or_gone(agent.pid)).then_some(()))
            })
            .await
            .is_ok()
        );
    }
    // The stopped agent stays stopped.
    let parked = h.get(&stopped.id).await?;
    assert_eq!(parked.status(), pb::AgentStatus::Stopped);
    assert_eq!(parked.generation, 1);
    Ok(())
}

#[tokio::test]
async fn graceful_shutdown_keeps_desired_state() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut events = h.watch(0, "").await?;
    let agent = h
        .create(reference_agent("durable", pb::RestartMode::Never))
        .await?;
    events.until(is_ready).await?;
    drop(events);

    assert_eq!(
        h.manager.terminate().await?,
        Some(0),
        "clean exit on SIGTERM"
    );
    assert!(
        !process_alive(agent.pid) || zombie_or_gone(agent.pid),
        "agent stopped with the manager"
    );

    h.restart_manager().await?;
    let mut events = h.watch(0, &agent.id).await?;
    let seen = events.until(|e| is_ready(e) && e.generation == 2).await?;
    assert!(kinds(&seen).contains(&"restarted"));
    assert_eq!(
        h.get(&agent.id).await?.desired_state(),
        pb::DesiredState::Running
    );
    Ok(())
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_the_grace_period() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut events = h.watch(0, "").await?;
    // A process that ignores SIGTERM (and never connects: it stays starting).
    let stubborn = pb::Agent {
        name: "stubborn".into(),
        command: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "trap '' TERM; while true; do sleep 0.1; done".into(),
        ],
        ..Default::default()
    };
    let agent = h.create(stubborn).await?;
    assert_eq!(agent.status(), pb::AgentStatus::Starting);
    events.until(|e| kind(e) == "started").await?;

    h.client
        .stop_agent(pb::StopAgentRequest {
            agent_id: agent.id.clone(),
        })
        .await?;
    let seen = events.until(|e| kind(e) == "stopped").await?;
    match &seen[0].kind {
        Some(Kind::Exited(exited)) => {
            assert_eq!(exited.signal, Some(9), "SIGTERM was ignored, so SIGKILL")
        }
        other => panic!("expected exited, got {other:?}"),
    }
    assert!(!process_alive(agent.pid) || zombie_or_gone(agent.pid));
    Ok(())
}

#[tokio::test]
async fn an_agent_that_keeps_crashing_fails_after_its_restart_budget() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut events = h.watch(0, "").await?;
    let crashing = pb::Agent {
        name: "crashing".into(),
        command: "/bin/false".into(),
        restart_policy: Some(pb::RestartPolicy {
            mode: pb::RestartMode::OnFailure as i32,
            max_restarts: 2,
            window: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            initial_backoff: Some(prost_types::Duration {
                seconds: 0,
                nanos: 20_000_000,
            }),
            max_backoff: Some(prost_types::Duration {
                seconds: 0,
                nanos: 40_000_000,
            }),
        }),
        ..Default::default()
    };
    let agent = h.create(crashing).await?;
    // First run plus two restarts, then no more.
    for _ in 0..3 {
        events.until(|e| kind(e) == "exited").await?;
    }
    let rest = events.until_idle().await?;
    assert!(!kinds(&rest).contains(&"started"), "{:?}", kinds(&rest));
    let failed = shepherd_testkit::eventually(common::WAIT, "status failed", || {
        let mut client = h.client.clone();
        let id = agent.id.clone();
        async move {
            let agent = client
                .get_agent(pb::GetAgentRequest { agent_id: id })
                .await?
                .into_inner();
            Ok((agent.status() == pb::AgentStatus::Failed).then_some(agent))
        }
    })
    .await?;
    assert_eq!(failed.generation, 3);
    assert!(
        failed.status_message.contains("giving up"),
        "{}",
        failed.status_message
    );
    Ok(())
}
