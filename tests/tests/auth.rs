//! With an API token configured, both APIs require it; health, reflection
//! and agent sessions stay open, and the scheduler presents its own token to
//! the agent-manager.

use shepherd_e2e::{Stack, StackOptions};
use shepherd_platform::auth::ClientMetadata;
use shepherd_proto::agentmanager::v1::{self as am, agent_manager_client::AgentManagerClient};
use shepherd_proto::scheduler::v1::{
    self as sched, RunnerState, scheduler_client::SchedulerClient,
};
use tonic::Code;

const TOKEN: &str = "correct-horse-battery-staple";

#[tokio::test]
async fn api_token_is_required_and_health_and_reflection_stay_open() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await?;
    let manager_url = stack.manager.url();
    let scheduler = stack.scheduler.as_ref().expect("scheduler");
    let scheduler_url = scheduler.url();
    let scheduler_addr = scheduler.addr.to_string();

    for token in [None, Some("wrong-token")] {
        let auth = ClientMetadata::new(token)?;
        let mut agents = AgentManagerClient::with_interceptor(
            shepherd_testkit::channel(&manager_url).await?,
            auth.clone(),
        );
        let status = agents
            .list_agents(am::ListAgentsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let mut workflows = SchedulerClient::with_interceptor(
            shepherd_testkit::channel(&scheduler_url).await?,
            auth,
        );
        let status = workflows
            .list_workflows(sched::ListWorkflowsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        // The message says what to do, and never echoes a token.
        assert!(!status.message().contains("wrong-token"));
    }

    // With the token everything works, including the scheduler's own calls
    // to the manager (creating a workflow checks the agent there) and the
    // agent's session (its per-agent token, not the API token).
    let agent = stack
        .create_agent("secured", am::RestartMode::Never)
        .await?;
    let workflow = stack
        .create_workflow("secured-flow", &agent.id, true, "echo {{title}}")
        .await?;
    stack
        .wait_runner(&workflow.id, RunnerState::Running, "")
        .await?;
    let task = stack.trigger(&workflow.id, "one", "authorised").await?;
    let done = stack
        .wait_tasks(&[task.id], sched::TaskState::Succeeded)
        .await?;
    assert_eq!(done[0].output.trim(), "authorised");

    // Health answers without a token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        shepherd_testkit::channel(&manager_url).await?,
    );
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // Reflection too (grpcurl without credentials).
    if let Some(grpcurl) = shepherd_testkit::grpcurl()? {
        let list = grpcurl
            .run(&["-plaintext", &scheduler_addr, "list"])
            .await?;
        assert!(list.contains("shepherd.scheduler.v1.Scheduler"), "{list}");
        let header = format!("authorization: Bearer {TOKEN}");
        let listed = grpcurl
            .run(&[
                "-plaintext",
                "-H",
                &header,
                &scheduler_addr,
                "shepherd.scheduler.v1.Scheduler/ListWorkflows",
            ])
            .await?;
        assert!(listed.contains("secured-flow"), "{listed}");
        let refused = grpcurl
            .run(&[
                "-plaintext",
                &scheduler_addr,
                "shepherd.scheduler.v1.Scheduler/ListWorkflows",
            ])
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("Unauthenticated"), "{refused}");
    }
    Ok(())
}

#[tokio::test]
async fn tls_between_every_party() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("shepherd-tls-{}", uuid::Uuid::new_v4()));
    let tls = shepherd_e2e::TlsFiles::generate(&dir)?;
    let mut stack = Stack::start(StackOptions {
        token: Some(TOKEN.into()),
        tls: Some(tls.clone()),
        ..Default::default()
    })
    .await?;

    // Agents reach the manager over TLS (the manager hands them the CA),
    // the scheduler reaches the manager over TLS, and so do we.
    let agent = stack
        .create_agent("tls-agent", am::RestartMode::Never)
        .await?;
    let workflow = stack
        .create_workflow("tls-flow", &agent.id, true, "echo {{title}}")
        .await?;
    stack
        .wait_runner(&workflow.id, RunnerState::Running, "")
        .await?;
    let task = stack.trigger(&workflow.id, "one", "encrypted").await?;
    let done = stack
        .wait_tasks(&[task.id], sched::TaskState::Succeeded)
        .await?;
    assert_eq!(done[0].output.trim(), "encrypted");

    // Plaintext is refused.
    let plain = shepherd_testkit::channel(&stack.manager.url()).await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => {
            AgentManagerClient::with_interceptor(channel, ClientMetadata::new(Some(TOKEN))?)
                .list_agents(am::ListAgentsRequest::default())
                .await
                .is_err()
        }
    };
    assert!(refused, "a plaintext call to a TLS server must fail");

    if let Some(grpcurl) = shepherd_testkit::grpcurl()? {
        let addr = stack.manager.addr.to_string();
        let ca = tls.ca.display().to_string();
        let list = grpcurl.run(&["-cacert", &ca, &addr, "list"]).await?;
        assert!(
            list.contains("shepherd.agentmanager.v1.AgentManager"),
            "{list}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
