//! The Kubernetes runtime (experimental) against a Kubernetes API server
//! that is real HTTP (`shepherd_testkit::kube_fake`), whose fake kubelet
//! runs each Pod's container as a local process: the manager's kube client
//! creates a Pod per generation, the agent in it connects back and takes
//! tasks, a container that dies is a new Pod (generation + 1, runners
//! healed), RestartAgent recreates the Pod and StopAgent deletes it.

use shepherd_e2e::{Stack, StackOptions, WAIT, kill9, test_restart_policy};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1 as sched;
use shepherd_testkit::kube_fake::FakeKubernetes;
use shepherd_testkit::{bin_path, eventually};

fn pod_agent(name: &str) -> anyhow::Result<am::Agent> {
    Ok(am::Agent {
        name: name.to_owned(),
        runtime: am::Runtime::Kubernetes as i32,
        image: "registry.example/shepherd-agent:test".into(),
        // The fake kubelet runs the command on this host.
        command: bin_path("shepherd-agent")?.display().to_string(),
        restart_policy: Some(test_restart_policy(am::RestartMode::OnFailure)),
        limits: Some(am::ResourceLimits {
            memory_bytes: 256 << 20,
            cpu_cores: 0.5,
            max_processes: 0,
        }),
        ..Default::default()
    })
}

async fn wait_pods(fake: &FakeKubernetes, expected: &[String]) -> anyhow::Result<()> {
    eventually(WAIT, &format!("Pods {expected:?}"), || async {
        Ok((fake.pod_names() == expected).then_some(()))
    })
    .await
}

#[tokio::test]
async fn a_kubernetes_agent_runs_in_one_pod_per_generation() -> anyhow::Result<()> {
    let fake = FakeKubernetes::start().await?;
    let mut stack = Stack::start(StackOptions {
        env: vec![
            ("KUBERNETES_API_URL", fake.url()),
            ("KUBERNETES_NAMESPACE", "agents".into()),
            ("KUBERNETES_POLL_INTERVAL", "100ms".into()),
        ],
        ..Default::default()
    })
    .await?;
    let agent = stack.create_agent_with(pod_agent("podded")?).await?;
    assert_eq!(agent.image, "registry.example/shepherd-agent:test");
    wait_pods(&fake, &["shepherd-podded-1".into()]).await?;

    // The Pod as the manager asked for it.
    let pod = &fake.created()[0];
    assert_eq!(pod["metadata"]["namespace"], "agents");
    assert_eq!(pod["metadata"]["labels"]["shepherd.dev/agent-id"], agent.id);
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/shepherd-agent:test");
    assert_eq!(container["resources"]["limits"]["memory"], "268435456");
    assert_eq!(container["resources"]["limits"]["cpu"], "500m");
    let env: Vec<&str> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|var| var["name"].as_str())
        .collect();
    for name in [
        "SHEPHERD_AGENT_ID",
        "SHEPHERD_SESSION_TOKEN",
        "SHEPHERD_MANAGER_URL",
    ] {
        assert!(env.contains(&name), "{name} missing from {env:?}");
    }

    // It takes work.
    let workflow = stack
        .create_workflow("in-a-pod", &agent.id, true, "echo {{title}}")
        .await?;
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Running, "")
        .await?;
    let task = stack.trigger(&workflow.id, "one", "one").await?;
    stack
        .wait_tasks(&[task.id], sched::TaskState::Succeeded)
        .await?;

    // Its container dies: the Pod failed, a new one is the next generation.
    let pid = fake
        .container_pid("shepherd-podded-1")
        .ok_or_else(|| anyhow::anyhow!("no container runs"))?;
    kill9(pid)?;
    stack.wait_agent_ready(&agent.id, 2).await?;
    wait_pods(&fake, &["shepherd-podded-2".into()]).await?;
    let events = stack.agent_events(&agent.id).await?;
    assert!(
        events.iter().any(|event| matches!(
            &event.kind,
            Some(am::agent_event::Kind::Restarted(restarted)) if restarted.generation == 2
        )),
        "AgentRestarted for generation 2"
    );
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Running, "")
        .await?;
    let task = stack.trigger(&workflow.id, "two", "two").await?;
    stack
        .wait_tasks(&[task.id], sched::TaskState::Succeeded)
        .await?;

    // RestartAgent is Pod recreation; StopAgent deletes it.
    stack.restart_agent(&agent.id).await?;
    stack.wait_agent_ready(&agent.id, 3).await?;
    wait_pods(&fake, &["shepherd-podded-3".into()]).await?;
    stack
        .agents
        .stop_agent(am::StopAgentRequest {
            agent_id: agent.id.clone(),
        })
        .await?;
    wait_pods(&fake, &[]).await?;
    assert_eq!(
        stack.agent(&agent.id).await?.status(),
        am::AgentStatus::Stopped
    );
    Ok(())
}

#[tokio::test]
async fn kubernetes_agents_need_an_image_and_a_configured_api() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let create = |agent: am::Agent| {
        let mut client = stack.agents.clone();
        async move {
            client
                .create_agent(am::CreateAgentRequest { agent: Some(agent) })
                .await
                .expect_err("accepted")
        }
    };
    let mut no_image = pod_agent("no-image")?;
    no_image.image.clear();
    let status = create(no_image).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("agent.image"), "{status:?}");

    let mut image_on_process = pod_agent("image-on-process")?;
    image_on_process.runtime = am::Runtime::Process as i32;
    let status = create(image_on_process).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    let status = create(pod_agent("no-api")?).await;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("KUBERNETES_API_URL"),
        "{status:?}"
    );
    Ok(())
}
