//! External agents: launched by something else (here: the test, standing
//! in for systemd or a Deployment), connecting with a long-lived credential
//! that is shown once, stored hashed and rotatable. A new instance is a
//! restart (generation + 1, AgentRestarted, runners healed); RestartAgent
//! and StopAgent ask it over its session to exit; a stolen or rotated
//! credential is refused.

use shepherd_e2e::external::{launch_external, session_refusal};
use shepherd_e2e::{Stack, StackOptions, WAIT, kill9, test_restart_policy};
use shepherd_proto::agentmanager::v1::{self as am, agent_event};
use shepherd_proto::scheduler::v1::{RunnerState, TaskState};
use tokio::process::Child;

fn launch(stack: &Stack, agent: &str, credential: &str) -> anyhow::Result<Child> {
    launch_external(agent, credential, &stack.manager.url())
}

async fn external_agent(stack: &mut Stack, name: &str) -> anyhow::Result<am::Agent> {
    Ok(stack
        .agents
        .create_agent(am::CreateAgentRequest {
            agent: Some(am::Agent {
                name: name.to_owned(),
                runtime: am::Runtime::External as i32,
                restart_policy: Some(test_restart_policy(am::RestartMode::OnFailure)),
                ..Default::default()
            }),
        })
        .await?
        .into_inner())
}

async fn refusal(stack: &Stack, agent: &str, credential: &str) -> anyhow::Result<tonic::Code> {
    session_refusal(&stack.manager.url(), agent, credential).await
}

#[tokio::test]
async fn an_external_agent_restarts_as_a_new_instance_and_its_credential_is_guarded()
-> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = external_agent(&mut stack, "outside").await?;
    assert_eq!(
        agent.credential.len(),
        64,
        "the credential is shown at creation"
    );
    let credential = agent.credential.clone();
    assert!(
        stack.agent(&agent.id).await?.credential.is_empty(),
        "and only then"
    );

    let mut first = launch(&stack, &agent.id, &credential)?;
    stack.wait_agent_ready(&agent.id, 1).await?;
    let workflow = stack
        .create_workflow("outside-work", &agent.id, true, "echo {{title}}")
        .await?;
    stack
        .wait_runner(&workflow.id, RunnerState::Running, "")
        .await?;
    let task = stack.trigger(&workflow.id, "one", "one").await?;
    stack
        .wait_tasks(std::slice::from_ref(&task.id), TaskState::Succeeded)
        .await?;

    // Its supervisor (the test) replaces a crashed instance: a restart.
    let pid = first.id().expect("pid") as i32;
    kill9(pid)?;
    first.wait().await?;
    let _second = launch(&stack, &agent.id, &credential)?;
    stack.wait_agent_ready(&agent.id, 2).await?;
    let restarted = stack
        .agent_events(&agent.id)
        .await?
        .into_iter()
        .find_map(|event| match event.kind {
            Some(agent_event::Kind::Restarted(restarted)) => Some(restarted),
            _ => None,
        })
        .expect("AgentRestarted");
    assert_eq!(restarted.generation, 2);
    stack
        .wait_runner(&workflow.id, RunnerState::Running, "")
        .await?;
    let task = stack.trigger(&workflow.id, "two", "two").await?;
    stack
        .wait_tasks(std::slice::from_ref(&task.id), TaskState::Succeeded)
        .await?;

    // A stolen credential (another agent's) and a rotated one are refused.
    let other = external_agent(&mut stack, "other").await?;
    assert_eq!(
        refusal(&stack, &agent.id, &other.credential).await?,
        tonic::Code::Unauthenticated
    );
    let rotated = stack
        .agents
        .rotate_agent_credential(am::RotateAgentCredentialRequest {
            agent_id: agent.id.clone(),
        })
        .await?
        .into_inner()
        .credential;
    assert_ne!(rotated, credential);
    assert_eq!(
        refusal(&stack, &agent.id, &credential).await?,
        tonic::Code::Unauthenticated,
        "the old credential after rotation"
    );

    // RestartAgent asks it to exit; its supervisor brings it back.
    let mut second = _second;
    stack.restart_agent(&agent.id).await?;
    let status = tokio::time::timeout(WAIT, second.wait()).await??;
    assert!(status.success(), "it exits when asked: {status}");
    let mut third = launch(&stack, &agent.id, &rotated)?;
    stack.wait_agent_ready(&agent.id, 3).await?;

    // StopAgent asks it to exit and refuses it until started again.
    stack
        .agents
        .stop_agent(am::StopAgentRequest {
            agent_id: agent.id.clone(),
        })
        .await?;
    let status = tokio::time::timeout(WAIT, third.wait()).await??;
    assert!(status.success(), "it exits when stopped: {status}");
    assert_eq!(
        refusal(&stack, &agent.id, &rotated).await?,
        tonic::Code::FailedPrecondition,
        "a stopped external agent may not connect"
    );
    let stopped = stack.agent(&agent.id).await?;
    assert_eq!(stopped.status(), am::AgentStatus::Stopped);
    stack
        .agents
        .start_agent(am::StartAgentRequest {
            agent_id: agent.id.clone(),
        })
        .await?;
    let _fourth = launch(&stack, &agent.id, &rotated)?;
    stack.wait_agent_ready(&agent.id, 4).await?;
    let now = stack.agent(&agent.id).await?;
    assert_eq!((now.status(), now.generation), (am::AgentStatus::Ready, 4));
    Ok(())
}

#[tokio::test]
async fn external_agents_take_no_launch_fields_or_limits() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let refused = stack
        .agents
        .clone()
        .create_agent(am::CreateAgentRequest {
            agent: Some(am::Agent {
                name: "bad".into(),
                runtime: am::Runtime::External as i32,
                command: "/bin/true".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("a command for an external agent");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let refused = stack
        .agents
        .clone()
        .create_agent(am::CreateAgentRequest {
            agent: Some(am::Agent {
                name: "bad".into(),
                runtime: am::Runtime::External as i32,
                limits: Some(am::ResourceLimits {
                    memory_bytes: 64 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .expect_err("limits for an external agent");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    Ok(())
}
