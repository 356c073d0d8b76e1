//! The API's edges: bad input gets precise codes and messages; reflection
//! and health work for third-party clients (grpcurl).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{Harness, reference_agent};
use shepherd_proto::agentmanager::v1 as pb;
use tonic::Code;

async fn create_err(h: &mut Harness, agent: pb::Agent) -> tonic::Status {
    h.client
        .create_agent(pb::CreateAgentRequest { agent: Some(agent) })
        .await
        .expect_err("bad agent accepted")
}

fn assert_status(status: &tonic::Status, code: Code, mentions: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(mentions),
        "message {:?} should mention {mentions:?}",
        status.message()
    );
}

#[tokio::test]
async fn bad_agents_are_rejected_with_invalid_argument_naming_the_field() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let good = reference_agent("good", pb::RestartMode::Never);

    let status = h
        .client
        .create_agent(pb::CreateAgentRequest { agent: None })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "agent");

    let mut empty_name = good.clone();
    empty_name.name = String::new();
    assert_status(
        &create_err(&mut h, empty_name).await,
        Code::InvalidArgument,
        "agent.name",
    );

    let mut bad_name = good.clone();
    bad_name.name = "Has Spaces".into();
    assert_status(
        &create_err(&mut h, bad_name).await,
        Code::InvalidArgument,
        "a-z",
    );

    let mut empty_command = good.clone();
    empty_command.command = "  ".into();
    assert_status(
        &create_err(&mut h, empty_command).await,
        Code::InvalidArgument,
        "agent.command",
    );

    let mut missing_command = good.clone();
    missing_command.command = "/no/such/program".into();
    assert_status(
        &create_err(&mut h, missing_command).await,
        Code::InvalidArgument,
        "not found",
    );

    let mut reserved_env = good.clone();
    reserved_env
        .env
        .insert("SHEPHERD_SESSION_TOKEN".into(), "x".into());
    assert_status(
        &create_err(&mut h, reserved_env).await,
        Code::InvalidArgument,
        "agent.env",
    );

    let mut bad_dir = good.clone();
    bad_dir.working_dir = "/no/such/dir".into();
    assert_status(
        &create_err(&mut h, bad_dir).await,
        Code::InvalidArgument,
        "agent.working_dir",
    );

    let mut bad_mode = good.clone();
    if let Some(policy) = bad_mode.restart_policy.as_mut() {
        policy.mode = 42;
    }
    assert_status(
        &create_err(&mut h, bad_mode).await,
        Code::InvalidArgument,
        "restart_policy.mode",
    );

    let mut negative = good.clone();
    if let Some(policy) = negative.restart_policy.as_mut() {
        policy.initial_backoff = Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        });
    }
    assert_status(
        &create_err(&mut h, negative).await,
        Code::InvalidArgument,
        "initial_backoff",
    );

    // Nothing was created by any of that; a good one then works, once.
    h.create(good.clone()).await?;
    assert_status(
        &create_err(&mut h, good).await,
        Code::AlreadyExists,
        "already exists",
    );
    let listed = h
        .client
        .list_agents(pb::ListAgentsRequest::default())
        .await?
        .into_inner();
    assert_eq!(listed.agents.len(), 1);
    Ok(())
}

#[tokio::test]
async fn bad_ids_tokens_and_ranges() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;

    let status = h
        .client
        .get_agent(pb::GetAgentRequest {
            agent_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "agent_id");
    let status = h
        .client
        .get_agent(pb::GetAgentRequest {
            agent_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "required");

    let unknown = uuid::Uuid::new_v4().to_string();
    for status in [
        h.client
            .get_agent(pb::GetAgentRequest {
                agent_id: unknown.clone(),
            })
            .await
            .unwrap_err(),
        h.client
            .start_agent(pb::StartAgentRequest {
                agent_id: unknown.clone(),
            })
            .await
            .unwrap_err(),
        h.client
            .stop_agent(pb::StopAgentRequest {
                agent_id: unknown.clone(),
            })
            .await
            .unwrap_err(),
        h.client
            .restart_agent(pb::RestartAgentRequest {
                agent_id: unknown.clone(),
            })
            .await
            .unwrap_err(),
        h.client
            .delete_agent(pb::DeleteAgentRequest {
                agent_id: unknown.clone(),
            })
            .await
            .unwrap_err(),
        h.client
            .get_agent_logs(pb::GetAgentLogsRequest {
                agent_id: unknown.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        h.client
            .dispatch_task(pb::DispatchTaskRequest {
                agent_id: unknown.clone(),
                task_id: "t".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    ] {
        assert_status(&status, Code::NotFound, &unknown);
    }

    for page_size in [-1, 1001] {
        let status = h
            .client
            .list_agents(pb::ListAgentsRequest {
                page_size,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_status(&status, Code::InvalidArgument, "page_size");
    }
    let status = h
        .client
        .list_agents(pb::ListAgentsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "page_token");
    let status = h
        .client
        .list_agents(pb::ListAgentsRequest {
            status: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "status");

    let status = h
        .client
        .dispatch_task(pb::DispatchTaskRequest {
            agent_id: unknown.clone(),
            task_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "task_id");
    let status = h
        .client
        .get_agent_logs(pb::GetAgentLogsRequest {
            agent_id: unknown.clone(),
            tail_lines: 20_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "tail_lines");
    let status = h
        .client
        .watch_agent_events(pb::WatchAgentEventsRequest {
            after_sequence: 0,
            agent_id: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "agent_id");
    Ok(())
}

#[tokio::test]
async fn list_agents_paginates_and_filters() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let mut names = Vec::new();
    for i in 0..5 {
        let mut agent = reference_agent(&format!("agent-{i}"), pb::RestartMode::Never);
        agent.desired_state = pb::DesiredState::Stopped as i32;
        agent.labels.insert(
            "team".into(),
            if i % 2 == 0 { "even" } else { "odd" }.into(),
        );
        names.push(h.create(agent).await?.name);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .client
            .list_agents(pb::ListAgentsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(page.agents.len() <= 2);
        seen.extend(page.agents.into_iter().map(|a| a.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, names, "every agent once, in creation order");

    let even = h
        .client
        .list_agents(pb::ListAgentsRequest {
            labels: [("team".to_string(), "even".to_string())].into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        even.agents
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["agent-0", "agent-2", "agent-4"]
    );
    let pending = h
        .client
        .list_agents(pb::ListAgentsRequest {
            status: pb::AgentStatus::Pending as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(pending.agents.len(), 5);
    let ready = h
        .client
        .list_agents(pb::ListAgentsRequest {
            status: pb::AgentStatus::Ready as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(ready.agents.is_empty());
    Ok(())
}

/// grpcurl 1.8.6 speaks only reflection v1alpha; newer ones use v1. Both
/// must work, and the health service must be listed and answer.
#[tokio::test]
async fn grpcurl_lists_services_and_health_is_serving() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let addr = h.manager.addr.to_string();

    let mut health = tonic_health::pb::health_client::HealthClient::new(
        shepherd_testkit::channel(&h.manager.url()).await?,
    );
    for service in [
        "",
        "shepherd.agentmanager.v1.AgentManager",
        "shepherd.agentmanager.v1.AgentSession",
    ] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        assert_eq!(
            response.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }

    let Some(grpcurl) = shepherd_testkit::grpcurl()? else {
        return Ok(());
    };
    let list = grpcurl.run(&["-plaintext", &addr, "list"]).await?;
    for service in [
        "shepherd.agentmanager.v1.AgentManager",
        "shepherd.agentmanager.v1.AgentSession",
        "grpc.health.v1.Health",
    ] {
        assert!(list.contains(service), "grpcurl list: {list}");
    }
    let check = grpcurl
        .run(&["-plaintext", &addr, "grpc.health.v1.Health/Check"])
        .await?;
    assert!(check.contains("SERVING"), "{check}");
    let described = grpcurl
        .run(&[
            "-plaintext",
            &addr,
            "describe",
            "shepherd.agentmanager.v1.AgentManager",
        ])
        .await?;
    assert!(described.contains("WatchAgentEvents"), "{described}");
    let listed = grpcurl
        .run(&[
            "-plaintext",
            "-d",
            "{\"page_size\": 5}",
            &addr,
            "shepherd.agentmanager.v1.AgentManager/ListAgents",
        ])
        .await?;
    let compact: String = listed.chars().filter(|c| !c.is_whitespace()).collect();
    assert_eq!(compact, "{}", "an empty list: {listed}");
    Ok(())
}
