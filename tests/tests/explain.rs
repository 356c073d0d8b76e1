//! "Why isn't it running?": each verdict ExplainWorkflow can give, built
//! for real (real agents, real replicas), and the CLI's `workflows why`.
//! (Waiting on an approval is built in `approvals.rs`, with the approval.)

use shepherd_e2e::{AuthChannel, Stack, StackOptions, WAIT, test_restart_policy};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, Verdict, scheduler_client::SchedulerClient};
use shepherd_testkit::{bin_path, eventually};

async fn explain(
    client: &SchedulerClient<AuthChannel>,
    workflow: &str,
) -> anyhow::Result<sched::WorkflowDiagnosis> {
    Ok(client
        .clone()
        .explain_workflow(sched::ExplainWorkflowRequest {
            workflow_id: workflow.to_owned(),
        })
        .await?
        .into_inner())
}

/// Waits until the workflow's verdict (asked of `client`) is `verdict`.
async fn verdict(
    client: &SchedulerClient<AuthChannel>,
    workflow: &str,
    verdict: Verdict,
) -> anyhow::Result<sched::WorkflowDiagnosis> {
    eventually(WAIT, &format!("verdict {verdict:?}"), || async {
        let diagnosis = explain(client, workflow).await?;
        Ok((diagnosis.verdict() == verdict).then_some(diagnosis))
    })
    .await
}

async fn workflow(
    stack: &mut Stack,
    name: &str,
    agent: &str,
    enabled: bool,
    template: &str,
    max_concurrency: u32,
) -> anyhow::Result<sched::Workflow> {
    Ok(stack
        .workflows
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: name.to_owned(),
                agent_id: agent.to_owned(),
                enabled,
                prompt_template: template.to_owned(),
                max_concurrency,
                ..Default::default()
            }),
        })
        .await?
        .into_inner())
}

#[tokio::test]
async fn every_verdict_is_built_for_real() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let scheduler = stack.workflows.clone();
    let idle = stack
        .create_agent("idle", am::RestartMode::OnFailure)
        .await?;

    // Nothing due: enabled, its agent ready, no task.
    let quiet = workflow(&mut stack, "quiet", &idle.id, true, "echo hi", 1).await?;
    // (The verdict can come before the new runner has taken its lease:
    // wait for both.)
    let seen = eventually(WAIT, "nothing due, with the lease held", || async {
        let diagnosis = explain(&scheduler, &quiet.id).await?;
        Ok(
            (diagnosis.verdict() == Verdict::NothingDue && !diagnosis.lease_holder.is_empty())
                .then_some(diagnosis),
        )
    })
    .await?;
    assert!(seen.summary.contains("no task pending"), "{}", seen.summary);
    assert_eq!(seen.agent_status, "ready");

    // Disabled.
    let off = workflow(&mut stack, "off", &idle.id, false, "echo hi", 1).await?;
    verdict(&scheduler, &off.id, Verdict::Disabled).await?;

    // Concurrency full with a long task: one in flight, one due behind it.
    let busy = stack
        .create_agent("busy", am::RestartMode::OnFailure)
        .await?;
    let long = workflow(&mut stack, "long", &busy.id, true, "sleep 60", 1).await?;
    stack.trigger(&long.id, "first", "first").await?;
    stack.trigger(&long.id, "second", "second").await?;
    let full = verdict(&scheduler, &long.id, Verdict::ConcurrencyFull).await?;
    assert_eq!(full.in_flight.len(), 1);
    assert_eq!(full.due, 1);
    assert!(
        full.summary.contains("1 of 1 in flight"),
        "{}",
        full.summary
    );

    // Agent stopped.
    let stopped = stack
        .create_agent("resting", am::RestartMode::OnFailure)
        .await?;
    let resting = workflow(&mut stack, "resting-work", &stopped.id, true, "echo hi", 1).await?;
    stack
        .agents
        .stop_agent(am::StopAgentRequest {
            agent_id: stopped.id.clone(),
        })
        .await?;
    verdict(&scheduler, &resting.id, Verdict::AgentStopped).await?;

    // Agent crash-looping: it exits at once, again and again.
    let crashing = stack
        .agents
        .create_agent(am::CreateAgentRequest {
            agent: Some(am::Agent {
                name: "crashing".into(),
                command: "/bin/sh".into(),
                args: vec!["-c".into(), "exit 3".into()],
                restart_policy: Some(test_restart_policy(am::RestartMode::OnFailure)),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let doomed = workflow(&mut stack, "doomed", &crashing.id, true, "echo hi", 1).await?;
    let looping = verdict(&scheduler, &doomed.id, Verdict::AgentCrashLooping).await?;
    assert!(looping.agent_generation > 1);

    // Lease held by another replica: once a second replica shares the
    // work, one of the two answers that the other runs `quiet`.
    let (_replica, other) = stack
        .start_replica(&[("REPLICA_ID", "second".into())])
        .await?;
    let elsewhere = eventually(WAIT, "one replica naming the other", || async {
        for client in [&scheduler, &other] {
            let diagnosis = explain(client, &quiet.id).await?;
            if diagnosis.verdict() == Verdict::LeaseElsewhere {
                return Ok(Some(diagnosis));
            }
        }
        Ok(None)
    })
    .await?;
    assert!(elsewhere.summary.contains(&elsewhere.lease_holder));
    assert!(elsewhere.lease_term > 0);

    // The CLI says the same.
    let output = tokio::process::Command::new(bin_path("shepherd")?)
        .args(["--output", "json", "workflows", "why", "off"])
        .env(
            "SHEPHERD_AGENT_MANAGER_URL",
            stack.options.url(&stack.manager),
        )
        .env("SHEPHERD_SCHEDULER_URL", stack.scheduler_url())
        .env_remove("SHEPHERD_TOKEN")
        .output()
        .await?;
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(json["verdict"], "disabled", "{json}");

    // An unknown workflow is NOT_FOUND; a malformed id INVALID_ARGUMENT.
    let missing = explain(&scheduler, &uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(
        missing
            .map_err(|e| e.downcast::<tonic::Status>().map(|s| s.code()))
            .err()
            .and_then(Result::ok),
        Some(tonic::Code::NotFound)
    );
    let bad = explain(&scheduler, "not-an-id").await;
    assert_eq!(
        bad.map_err(|e| e.downcast::<tonic::Status>().map(|s| s.code()))
            .err()
            .and_then(Result::ok),
        Some(tonic::Code::InvalidArgument)
    );
    Ok(())
}
