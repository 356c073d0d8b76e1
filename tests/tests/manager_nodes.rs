//! Several agent-managers on one database, each a node with a lease.
//!
//! - Three managers and two schedulers, an external agent: dispatches reach
//!   the node holding its session through any node; every node's
//!   WatchAgentEvents shows the one sequence; when the node holding the
//!   session is killed (-9), the agent reconnects to another, becomes
//!   generation + 1, its runner heals and every task still succeeds.
//! - A node whose lease expires: its process agents show as LOST with the
//!   reason; the node comes back under its name and takes them back.

use std::time::Instant;

use shepherd_e2e::external::{launch_external, session_refusal};
use shepherd_e2e::{AuthChannel, Stack, StackOptions, WAIT, kill9, test_restart_policy};
use shepherd_proto::agentmanager::v1::{
    self as am, agent_manager_client::AgentManagerClient, watch_agent_events_response,
};
use shepherd_proto::scheduler::v1 as sched;
use shepherd_testkit::{ServiceProcess, eventually};

async fn client(
    stack: &Stack,
    node: &ServiceProcess,
) -> anyhow::Result<AgentManagerClient<AuthChannel>> {
    Ok(AgentManagerClient::new(stack.options.channel(node).await?))
}

async fn get(client: &AgentManagerClient<AuthChannel>, id: &str) -> anyhow::Result<am::Agent> {
    Ok(client
        .clone()
        .get_agent(am::GetAgentRequest {
            agent_id: id.to_owned(),
        })
        .await?
        .into_inner())
}

/// The log as a node's WatchAgentEvents shows it from the start: through
/// sequence `through`, or (None) until the stream has caught up (its first
/// heartbeat).
async fn watched_log(
    client: &AgentManagerClient<AuthChannel>,
    through: Option<u64>,
) -> anyhow::Result<Vec<am::AgentEvent>> {
    let mut stream = client
        .clone()
        .watch_agent_events(am::WatchAgentEventsRequest::default())
        .await?
        .into_inner();
    let read = async {
        let mut events = Vec::new();
        while let Some(message) = stream.message().await? {
            match message.kind {
                Some(watch_agent_events_response::Kind::Event(event)) => {
                    let sequence = event.sequence;
                    events.push(event);
                    if through.is_some_and(|through| sequence >= through) {
                        return anyhow::Ok(events);
                    }
                }
                Some(watch_agent_events_response::Kind::Heartbeat(_)) if through.is_none() => {
                    return Ok(events);
                }
                _ => {}
            }
        }
        anyhow::bail!("event stream ended")
    };
    tokio::time::timeout(WAIT, read).await?
}

async fn trigger_all(
    scheduler: &mut shepherd_proto::scheduler::v1::scheduler_client::SchedulerClient<AuthChannel>,
    workflow: &str,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..count {
        let task = scheduler
            .trigger_workflow(sched::TriggerWorkflowRequest {
                workflow_id: workflow.to_owned(),
                idempotency_key: format!("{prefix}-{i}"),
                fields: Some(sched::TaskFields {
                    title: format!("{prefix}-{i}"),
                    ..Default::default()
                }),
                timeout: None,
                priority: 0,
            })
            .await?
            .into_inner();
        ids.push(task.id);
    }
    Ok(ids)
}

#[tokio::test]
async fn an_external_agent_outlives_the_manager_holding_its_session() -> anyhow::Result<()> {
    let lease = ("NODE_LEASE_TTL", "3s".to_owned());
    let mut stack = Stack::start(StackOptions {
        env: vec![lease.clone(), ("NODE_NAME", "node-a".into())],
        // Kept (and shown if the tasks do not all succeed).
        capture_logs: true,
        log: "info".into(),
        ..Default::default()
    })
    .await?;
    // The stack's own scheduler talks to node A, which this test kills:
    // the two schedulers here talk to B and C.
    stack.kill_scheduler().await?;
    let node_b = stack
        .start_manager_node(&[lease.clone(), ("NODE_NAME", "node-b".into())])
        .await?;
    let node_c = stack
        .start_manager_node(&[lease.clone(), ("NODE_NAME", "node-c".into())])
        .await?;
    let (a, b, c) = (
        client(&stack, &stack.manager).await?,
        client(&stack, &node_b).await?,
        client(&stack, &node_c).await?,
    );
    let (_s1, mut scheduler) = stack
        .start_scheduler_on(&stack.options.url(&node_b), &[("REPLICA_ID", "s1".into())])
        .await?;
    let (_s2, _) = stack
        .start_scheduler_on(&stack.options.url(&node_c), &[("REPLICA_ID", "s2".into())])
        .await?;
    stack.workflows = scheduler.clone();

    let agent = b
        .clone()
        .create_agent(am::CreateAgentRequest {
            agent: Some(am::Agent {
                name: "roaming".into(),
                runtime: am::Runtime::External as i32,
                restart_policy: Some(test_restart_policy(am::RestartMode::OnFailure)),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let urls = [&stack.manager, &node_b, &node_c]
        .map(|node| stack.options.url(node))
        .join(",");
    let _instance = launch_external(&agent.id, &agent.credential, &urls)?;
    // The agent tries the URLs in order: its session lands on node A.
    let ready = eventually(WAIT, "the agent ready on node A", || async {
        let seen = get(&b, &agent.id).await?;
        Ok((seen.status() == am::AgentStatus::Ready).then_some(seen))
    })
    .await?;
    assert_eq!(ready.node, "node-a");
    assert_eq!(ready.generation, 1);

    let finished = stack.scratch_file("finished.log");
    let template = format!("sleep 0.2; echo {{{{title}}}} >> {}", finished.display());
    let workflow = stack
        .create_workflow("roaming-work", &agent.id, true, &template)
        .await?;
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Running, "")
        .await?;

    // Dispatched through B and C (the schedulers' managers), delivered by A.
    let first = trigger_all(&mut scheduler, &workflow.id, "before", 5).await?;
    stack
        .wait_tasks(&first, sched::TaskState::Succeeded)
        .await?;

    // Every node's watchers see the same sequence.
    let on_a = watched_log(&a, None).await?;
    let latest = on_a.last().map(|event| event.sequence);
    assert!(
        latest.is_some_and(|latest| latest as usize == on_a.len()),
        "gap-free from 1"
    );
    assert_eq!(
        on_a,
        watched_log(&b, latest).await?,
        "node B's watch differs"
    );
    assert_eq!(
        on_a,
        watched_log(&c, latest).await?,
        "node C's watch differs"
    );

    // Work in flight when node A dies.
    let second = trigger_all(&mut scheduler, &workflow.id, "during", 10).await?;
    shepherd_e2e::wait_lines(&finished, first.len() + 1).await?;
    let killed = Instant::now();
    kill9(stack.manager.pid().unwrap_or(0))?;
    let moved = eventually(WAIT, "the agent ready on another node", || async {
        let seen = get(&b, &agent.id).await?;
        Ok((seen.status() == am::AgentStatus::Ready && seen.node != "node-a").then_some(seen))
    })
    .await?;
    let took = killed.elapsed();
    eprintln!(
        "external agent reconnected to {} {took:?} after node A was killed",
        moved.node
    );
    assert_eq!(
        moved.generation, 2,
        "a session on another node is a new generation"
    );
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Running, "")
        .await?;
    let third = trigger_all(&mut scheduler, &workflow.id, "after", 5).await?;
    let all: Vec<String> = second.into_iter().chain(third).collect();
    if let Err(err) = stack.wait_tasks(&all, sched::TaskState::Succeeded).await {
        // What each task went through, and what the services said.
        for task in stack.tasks(&workflow.id).await? {
            eprintln!(
                "{} {:?} attempts {:?} error {:?} dead {}",
                task.id,
                task.state(),
                task.history
                    .iter()
                    .map(|a| a.outcome.clone())
                    .collect::<Vec<_>>(),
                task.last_error,
                task.dead_letter
            );
        }
        eprintln!("{}", stack.service_logs());
        return Err(err);
    }

    // A rotated credential is refused on every node left; the new one is
    // taken.
    let rotated = c
        .clone()
        .rotate_agent_credential(am::RotateAgentCredentialRequest {
            agent_id: agent.id.clone(),
        })
        .await?
        .into_inner();
    for node in [&node_b, &node_c] {
        let url = stack.options.url(node);
        assert_eq!(
            session_refusal(&url, &agent.id, &agent.credential).await?,
            tonic::Code::Unauthenticated
        );
    }
    assert_ne!(rotated.credential, agent.credential);
    // So is a stolen id with a guessed credential.
    let guessed = "0".repeat(64);
    assert_eq!(
        session_refusal(&stack.options.url(&node_b), &agent.id, &guessed).await?,
        tonic::Code::Unauthenticated
    );
    Ok(())
}

#[tokio::test]
async fn a_node_whose_lease_expires_shows_its_agents_lost_until_it_is_back() -> anyhow::Result<()> {
    let lease = ("NODE_LEASE_TTL", "1500ms".to_owned());
    let mut stack = Stack::start(StackOptions {
        env: vec![lease.clone(), ("NODE_NAME", "node-a".into())],
        ..Default::default()
    })
    .await?;
    let node_b = stack
        .start_manager_node(&[lease, ("NODE_NAME", "node-b".into())])
        .await?;
    let b = client(&stack, &node_b).await?;
    let agent = stack
        .create_agent("homebody", am::RestartMode::OnFailure)
        .await?;
    assert_eq!(get(&b, &agent.id).await?.node, "node-a");

    // Calls about it through B reach A, which supervises it.
    let dispatched = b
        .clone()
        .dispatch_task(am::DispatchTaskRequest {
            agent_id: agent.id.clone(),
            task_id: "through-b".into(),
            payload: b"hello".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(dispatched.state(), am::TaskState::Delivered);
    let logs = b
        .clone()
        .get_agent_logs(am::GetAgentLogsRequest {
            agent_id: agent.id.clone(),
            ..Default::default()
        })
        .await;
    assert!(logs.is_ok(), "logs through B: {logs:?}");

    kill9(stack.manager.pid().unwrap_or(0))?;
    let lost = eventually(WAIT, "the agent shown LOST by node B", || async {
        let seen = get(&b, &agent.id).await?;
        Ok((seen.status() == am::AgentStatus::Lost).then_some(seen))
    })
    .await?;
    assert!(
        lost.status_message.contains("node-a"),
        "the reason names the node: {}",
        lost.status_message
    );
    // Starting it elsewhere is possible, but here node A comes back under
    // its name: it adopts the process it left running and takes it back.
    stack.restart_manager().await?;
    let back = eventually(WAIT, "the agent ready again on node A", || async {
        let seen = get(&b, &agent.id).await?;
        Ok((seen.status() == am::AgentStatus::Ready).then_some(seen))
    })
    .await?;
    assert_eq!(back.node, "node-a");
    assert_eq!(back.generation, agent.generation, "adopted, not relaunched");
    let info = b
        .clone()
        .get_manager_info(am::GetManagerInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(info.node, "node-b");
    let names: Vec<(&str, bool)> = info
        .nodes
        .iter()
        .map(|node| (node.name.as_str(), node.live))
        .collect();
    assert_eq!(names, [("node-a", true), ("node-b", true)]);
    Ok(())
}
