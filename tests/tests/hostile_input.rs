//! Hostile input and client retries never hurt the service: what a tester
//! sending extreme values and retry storms found, each a test.

use std::time::{Duration, Instant};

use shepherd_e2e::raw::raw_call;
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
                    priority: 0,
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
                    policy: None,
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
                        policy: None,
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

/// A rejected CreateAgent stores nothing, so a retry with the same name and
/// a good command succeeds; relative and non-executable commands and huge
/// arguments are refused before anything is written.
#[tokio::test]
async fn a_rejected_agent_is_not_stored() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let bad: Vec<(String, Vec<String>)> = vec![
        ("/etc/passwd".into(), vec![]),
        ("../../etc/passwd".into(), vec![]),
        ("/bin/true".into(), vec!["x".repeat(200 * 1024)]),
    ];
    for (command, args) in bad {
        let status = stack
            .agents
            .create_agent(am::CreateAgentRequest {
                agent: Some(am::Agent {
                    name: "twice".into(),
                    command,
                    args,
                    ..Default::default()
                }),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().len() < 1024, "{status:?}");
    }
    let listed = stack
        .agents
        .list_agents(am::ListAgentsRequest::default())
        .await?
        .into_inner()
        .agents;
    assert!(listed.is_empty(), "{listed:?}");
    // The name is still free.
    stack.create_agent("twice", am::RestartMode::Never).await?;
    Ok(())
}

/// A cursor past the end of the event log is refused with the latest
/// sequence, instead of a stream that silently delivers nothing.
#[tokio::test]
async fn a_cursor_past_the_end_is_out_of_range() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    stack.create_agent("worker", am::RestartMode::Never).await?;
    let status = stack
        .agents
        .watch_agent_events(am::WatchAgentEventsRequest {
            after_sequence: 1_000_000,
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("latest sequence is"),
        "{status:?}"
    );
    Ok(())
}

/// A workflow whose agent was deleted cannot be enabled again or get
/// tasks that could never run.
#[tokio::test]
async fn a_workflow_of_a_deleted_agent_cannot_be_enabled_or_triggered() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack.create_agent("doomed", am::RestartMode::Never).await?;
    let workflow = stack
        .create_workflow("orphaned", &agent.id, true, "echo {{title}}")
        .await?;
    stack
        .agents
        .delete_agent(am::DeleteAgentRequest {
            agent_id: agent.id.clone(),
        })
        .await?;
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Stopped, "deleted")
        .await?;
    let status = stack
        .workflows
        .update_workflow(sched::UpdateWorkflowRequest {
            workflow: Some(sched::Workflow {
                id: workflow.id.clone(),
                enabled: true,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let status = stack
        .trigger(&workflow.id, "never", "never")
        .await
        .expect_err("refused")
        .downcast::<tonic::Status>()?;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    Ok(())
}

/// Undecodable requests are the caller's fault (INVALID_ARGUMENT, not
/// INTERNAL), and oversized ones say RESOURCE_EXHAUSTED (not OUT_OF_RANGE),
/// on both services.
#[tokio::test]
async fn garbage_and_oversized_requests_get_the_callers_codes() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let scheduler = stack.scheduler.as_ref().expect("scheduler").url();
    let manager = stack.manager.url();
    let garbage = vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x12];
    let invalid_utf8 = vec![0x12, 0x02, 0xc3, 0x28];
    let huge = {
        // Field 2 (name), length-delimited, 5 MiB.
        let len = 5 * 1024 * 1024;
        let mut message = vec![0x12];
        let mut n = len;
        while n >= 0x80 {
            message.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        message.push(n as u8);
        message.resize(message.len() + len, b'x');
        message
    };
    for (url, path) in [
        (&manager, "/shepherd.agentmanager.v1.AgentManager/GetAgent"),
        (&scheduler, "/shepherd.scheduler.v1.Scheduler/GetWorkflow"),
    ] {
        for body in [garbage.clone(), invalid_utf8.clone()] {
            let status = raw_call(url, path, body).await;
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{path}: {status:?}"
            );
        }
        let status = raw_call(url, path, huge.clone()).await;
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "{path}: {status:?}"
        );
    }
    Ok(())
}

/// NUL bytes (which PostgreSQL cannot store) are refused at the edge with
/// INVALID_ARGUMENT naming the field, never UNAVAILABLE; errors about huge
/// inputs stay short; restart policies that would fork-loop are refused.
#[tokio::test]
async fn nul_bytes_huge_inputs_and_fork_loop_policies_are_refused_clearly() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack.create_agent("worker", am::RestartMode::Never).await?;
    let workflow = stack
        .create_workflow("flow", &agent.id, false, "echo {{title}}")
        .await?;
    let shell = "/bin/sh".to_owned();
    let bad_agents = [
        am::Agent {
            args: vec!["a\0b".into()],
            ..Default::default()
        },
        am::Agent {
            env: [("K".to_owned(), "v\0".to_owned())].into(),
            ..Default::default()
        },
        am::Agent {
            labels: [("team".to_owned(), "x\0".to_owned())].into(),
            ..Default::default()
        },
        am::Agent {
            restart_policy: Some(am::RestartPolicy {
                mode: am::RestartMode::Always as i32,
                max_restarts: 100_000,
                window: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1_000_000,
                }),
                initial_backoff: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
                max_backoff: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
            }),
            ..Default::default()
        },
    ];
    let fields = [
        "agent.args[0]",
        "agent.env",
        "agent.labels",
        "agent.restart_policy.window",
    ];
    for ((n, mut bad), field) in bad_agents.into_iter().enumerate().zip(fields) {
        bad.name = format!("bad-{n}");
        bad.command = shell.clone();
        let status = stack
            .agents
            .create_agent(am::CreateAgentRequest { agent: Some(bad) })
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{n}: {status:?}"
        );
        // The field also as a google.rpc.BadRequest violation, for clients.
        use tonic_types::StatusExt;
        let violations = status
            .get_details_bad_request()
            .map(|bad| bad.field_violations)
            .unwrap_or_default();
        assert_eq!(violations.len(), 1, "{n}: {status:?}");
        assert!(
            violations[0].field.starts_with(field),
            "{n}: {violations:?}"
        );
        assert!(!violations[0].description.is_empty());
    }
    let status = stack
        .workflows
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: "nul".into(),
                agent_id: agent.id.clone(),
                prompt_template: "echo \0".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = stack
        .trigger(&workflow.id, "k", "title\0")
        .await
        .expect_err("refused")
        .downcast::<tonic::Status>()?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("fields.title"), "{status:?}");

    // Huge inputs: short errors.
    let huge = "x".repeat(1 << 20);
    let statuses = [
        stack
            .workflows
            .get_task(sched::GetTaskRequest {
                task_id: huge.clone(),
            })
            .await
            .expect_err("refused"),
        stack
            .workflows
            .get_workflow(sched::GetWorkflowRequest {
                workflow_id: huge.clone(),
            })
            .await
            .expect_err("refused"),
        stack
            .agents
            .get_agent(am::GetAgentRequest {
                agent_id: huge.clone(),
            })
            .await
            .expect_err("refused"),
        stack
            .workflows
            .create_workflow(sched::CreateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    name: "cron".into(),
                    agent_id: agent.id.clone(),
                    trigger: Some(sched::Trigger {
                        kind: Some(sched::trigger::Kind::Cron(sched::CronTrigger {
                            policy: None,
                            expression: huge.clone(),
                        })),
                    }),
                    ..Default::default()
                }),
            })
            .await
            .expect_err("refused"),
    ];
    for status in statuses {
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{:?}",
            status.code()
        );
        assert!(
            status.message().len() < 1024,
            "a {} byte message",
            status.message().len()
        );
    }
    Ok(())
}
