//! Hostile input and client retries never hurt the service: what a tester
//! sending extreme values and retry storms found, each a test.

use std::time::{Duration, Instant};

use shepherd_e2e::{Stack, StackOptions};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1 as sched;

/// The normal client retry pattern: 200 concurrent triggers with one
/// idempotency key. Every call answers with the one task, and another
/// client's unrelated call is not held up meanwhile.
#[tokio::test]
async fn a_burst_of_same_key_triggers_answers_every_call_with_one_task() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack.create_agent("worker", am::RestartMode::Never).await?;
    let workflow = stack
        .create_workflow("burst", &agent.id, false, "echo {{title}}")
        .await?;
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let mut client = stack.workflows.clone();
        let workflow_id = workflow.id.clone();
        calls.spawn(async move {
            client
                .trigger_workflow(sched::TriggerWorkflowRequest {
                    workflow_id,
                    idempotency_key: "same".into(),
                    fields: None,
                    timeout: None,
                })
                .await
                .map(|response| response.into_inner().id)
        });
    }
    // Meanwhile, another client's unrelated calls.
    let mut slowest = Duration::ZERO;
    let mut other = stack.workflows.clone();
    for _ in 0..10 {
        let call = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(10),
            other.list_workflows(sched::ListWorkflowsRequest::default()),
        )
        .await??;
        slowest = slowest.max(call.elapsed());
    }
    let mut ids = std::collections::BTreeSet::new();
    tokio::time::timeout(shepherd_e2e::WAIT, async {
        while let Some(result) = calls.join_next().await {
            ids.insert(result??);
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("same-key triggers still unanswered after 30 s"))??;
    println!(
        "200 same-key triggers answered in {:?}; slowest unrelated call {slowest:?}",
        started.elapsed()
    );
    assert_eq!(ids.len(), 1, "one task for one key: {ids:?}");
    Ok(())
}

/// Periods and delays far past what time arithmetic can hold are refused
/// at the edge, with the field named.
#[tokio::test]
async fn extreme_periods_and_delays_are_refused() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack.create_agent("worker", am::RestartMode::Never).await?;
    let huge = [
        i64::MAX,
        584_000 * 365 * 24 * 3600, // ~584,000 years
        300_000 * 365 * 24 * 3600,
        101 * 365 * 24 * 3600,
    ];
    for (n, seconds) in huge.into_iter().enumerate() {
        for (kind, trigger) in [
            (
                "interval",
                sched::trigger::Kind::Interval(sched::IntervalTrigger {
                    period: Some(prost_types::Duration { seconds, nanos: 0 }),
                }),
            ),
            (
                "delay",
                sched::trigger::Kind::Delay(sched::DelayTrigger {
                    delay: Some(prost_types::Duration { seconds, nanos: 0 }),
                }),
            ),
        ] {
            let status = stack
                .workflows
                .create_workflow(sched::CreateWorkflowRequest {
                    workflow: Some(sched::Workflow {
                        name: format!("{kind}-{n}"),
                        agent_id: agent.id.clone(),
                        enabled: true,
                        trigger: Some(sched::Trigger {
                            kind: Some(trigger),
                        }),
                        ..Default::default()
                    }),
                })
                .await
                .expect_err("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(
                status
                    .message()
                    .contains(&format!("workflow.trigger.{kind}")),
                "{status:?}"
            );
        }
    }
    // Schedules still fire: a 1 s interval workflow gets its task.
    let ticking = stack
        .workflows
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: "ticking".into(),
                agent_id: agent.id.clone(),
                enabled: true,
                trigger: Some(sched::Trigger {
                    kind: Some(sched::trigger::Kind::Interval(sched::IntervalTrigger {
                        period: Some(prost_types::Duration {
                            seconds: 1,
                            nanos: 0,
                        }),
                    })),
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let client = stack.workflows.clone();
    shepherd_testkit::eventually(shepherd_e2e::WAIT, "a schedule tick", || {
        let mut client = client.clone();
        let workflow_id = ticking.id.clone();
        async move {
            let tasks = client
                .list_tasks(sched::ListTasksRequest {
                    workflow_id,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .tasks;
            Ok((!tasks.is_empty()).then_some(()))
        }
    })
    .await?;
    Ok(())
}
