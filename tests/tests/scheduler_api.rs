//! The scheduler's API: workflow lifecycle, triggers and schedules, and the
//! codes and messages bad input gets.

use shepherd_e2e::{Stack, StackOptions, lines};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, RunnerState, TaskState};
use tonic::Code;

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, mentions: &str) {
    let status = result.expect_err("bad input accepted");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(mentions),
        "message {:?} should mention {mentions:?}",
        status.message()
    );
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

#[tokio::test]
async fn enable_disable_delete_and_agent_deletion_drive_runners() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack.create_agent("worker", am::RestartMode::Never).await?;
    let workflow = stack
        .create_workflow("flow", &agent.id, false, "echo {{title}}")
        .await?;
    assert!(!workflow.enabled);
    let runners = stack.runners(&agent.id).await?;
    assert_eq!(runners[0].state(), RunnerState::Stopped);

    // Enabling starts the runner; disabling stops it.
    let enable = |enabled: bool| sched::UpdateWorkflowRequest {
        workflow: Some(sched::Workflow {
            id: workflow.id.clone(),
            enabled,
            ..Default::default()
        }),
        update_mask: mask(&["enabled"]),
    };
    stack.workflows.update_workflow(enable(true)).await?;
    stack
        .wait_runner(&workflow.id, RunnerState::Running, "")
        .await?;
    stack.workflows.update_workflow(enable(false)).await?;
    stack
        .wait_runner(&workflow.id, RunnerState::Stopped, "workflow disabled")
        .await?;

    // Triggering a disabled workflow stores the task; enabling runs it.
    let task = stack.trigger(&workflow.id, "k1", "hello").await?;
    assert_eq!(task.state(), TaskState::Pending);
    assert_eq!(task.prompt, "echo hello");
    stack.workflows.update_workflow(enable(true)).await?;
    let done = stack
        .wait_tasks(std::slice::from_ref(&task.id), TaskState::Succeeded)
        .await?;
    assert_eq!(done[0].output.trim(), "hello");

    // Deleting the agent disables its workflows, with the reason.
    stack
        .agents
        .delete_agent(am::DeleteAgentRequest {
            agent_id: agent.id.clone(),
        })
        .await?;
    let reason = format!("agent {} was deleted", agent.id);
    stack
        .wait_runner(&workflow.id, RunnerState::Stopped, &reason)
        .await?;
    let after = stack
        .workflows
        .get_workflow(sched::GetWorkflowRequest {
            workflow_id: workflow.id.clone(),
        })
        .await?
        .into_inner();
    assert!(!after.enabled);
    assert_eq!(after.disabled_reason, reason);

    stack
        .workflows
        .delete_workflow(sched::DeleteWorkflowRequest {
            workflow_id: workflow.id.clone(),
        })
        .await?;
    assert_status(
        stack
            .workflows
            .get_workflow(sched::GetWorkflowRequest {
                workflow_id: workflow.id.clone(),
            })
            .await,
        Code::NotFound,
        &workflow.id,
    );
    Ok(())
}

#[tokio::test]
async fn one_task_per_idempotency_key_and_schedules_record_ticks() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack.create_agent("worker", am::RestartMode::Never).await?;
    let runs = stack.scratch_file("runs.log");
    let template = format!("echo {{{{title}}}} >> {}", runs.display());
    let manual = stack
        .create_workflow("manual", &agent.id, true, &template)
        .await?;

    let first = stack.trigger(&manual.id, "same-key", "once").await?;
    let second = stack.trigger(&manual.id, "same-key", "twice?").await?;
    assert_eq!(first.id, second.id);
    assert_eq!(
        second.fields.as_ref().map(|f| f.title.as_str()),
        Some("once"),
        "the first trigger wins"
    );
    stack
        .wait_tasks(std::slice::from_ref(&first.id), TaskState::Succeeded)
        .await?;
    assert_eq!(lines(&runs), ["once"]);
    let listed = stack
        .workflows
        .list_tasks(sched::ListTasksRequest {
            workflow_id: manual.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(listed.tasks.len(), 1);

    // An interval schedule records one task per tick.
    let ticks = stack.scratch_file("ticks.log");
    let interval = stack
        .workflows
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: "every-second".into(),
                agent_id: agent.id.clone(),
                enabled: true,
                prompt_template: format!("echo tick >> {}", ticks.display()),
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
    let tasks = shepherd_testkit::eventually(shepherd_e2e::WAIT, "two ticks to complete", || {
        let mut client = stack.workflows.clone();
        let id = interval.id.clone();
        async move {
            let tasks = client
                .list_tasks(sched::ListTasksRequest {
                    workflow_id: id,
                    state: TaskState::Succeeded as i32,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .tasks;
            Ok((tasks.len() >= 2).then_some(tasks))
        }
    })
    .await?;
    assert!(tasks.iter().all(|t| t.idempotency_key.starts_with("tick-")));
    assert_ne!(tasks[0].idempotency_key, tasks[1].idempotency_key);
    // Disabling stops the ticks.
    stack
        .workflows
        .update_workflow(sched::UpdateWorkflowRequest {
            workflow: Some(sched::Workflow {
                id: interval.id.clone(),
                enabled: false,
                ..Default::default()
            }),
            update_mask: mask(&["enabled"]),
        })
        .await?;
    stack
        .wait_runner(&interval.id, RunnerState::Stopped, "workflow disabled")
        .await?;
    Ok(())
}

#[tokio::test]
async fn bad_input_on_every_rpc_says_what_to_fix() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack.create_agent("worker", am::RestartMode::Never).await?;
    let good = sched::Workflow {
        name: "good".into(),
        agent_id: agent.id.clone(),
        ..Default::default()
    };
    let create = |workflow: sched::Workflow| sched::CreateWorkflowRequest {
        workflow: Some(workflow),
    };
    let client = &mut stack.workflows;

    assert_status(
        client
            .create_workflow(sched::CreateWorkflowRequest { workflow: None })
            .await,
        Code::InvalidArgument,
        "workflow",
    );
    assert_status(
        client
            .create_workflow(create(sched::Workflow {
                name: "Bad Name".into(),
                ..good.clone()
            }))
            .await,
        Code::InvalidArgument,
        "workflow.name",
    );
    assert_status(
        client
            .create_workflow(create(sched::Workflow {
                agent_id: "x".into(),
                ..good.clone()
            }))
            .await,
        Code::InvalidArgument,
        "workflow.agent_id",
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_status(
        client
            .create_workflow(create(sched::Workflow {
                agent_id: unknown.clone(),
                ..good.clone()
            }))
            .await,
        Code::InvalidArgument,
        "does not exist",
    );
    assert_status(
        client
            .create_workflow(create(sched::Workflow {
                prompt_template: "{{author}}".into(),
                ..good.clone()
            }))
            .await,
        Code::InvalidArgument,
        "unknown field",
    );
    assert_status(
        client
            .create_workflow(create(sched::Workflow {
                max_concurrency: 5000,
                ..good.clone()
            }))
            .await,
        Code::InvalidArgument,
        "max_concurrency",
    );
    let cron = sched::Trigger {
        kind: Some(sched::trigger::Kind::Cron(sched::CronTrigger {
            policy: None,
            expression: "every day".into(),
        })),
    };
    assert_status(
        client
            .create_workflow(create(sched::Workflow {
                trigger: Some(cron),
                ..good.clone()
            }))
            .await,
        Code::InvalidArgument,
        "cron",
    );
    let fast = sched::Trigger {
        kind: Some(sched::trigger::Kind::Interval(sched::IntervalTrigger {
            policy: None,
            period: Some(prost_types::Duration {
                seconds: 0,
                nanos: 1000,
            }),
        })),
    };
    assert_status(
        client
            .create_workflow(create(sched::Workflow {
                trigger: Some(fast),
                ..good.clone()
            }))
            .await,
        Code::InvalidArgument,
        "at least 1s",
    );

    let workflow = client
        .create_workflow(create(good.clone()))
        .await?
        .into_inner();
    assert_status(
        client.create_workflow(create(good.clone())).await,
        Code::AlreadyExists,
        "already exists",
    );

    assert_status(
        client
            .get_workflow(sched::GetWorkflowRequest {
                workflow_id: unknown.clone(),
            })
            .await,
        Code::NotFound,
        &unknown,
    );
    assert_status(
        client
            .get_workflow(sched::GetWorkflowRequest {
                workflow_id: "".into(),
            })
            .await,
        Code::InvalidArgument,
        "required",
    );
    assert_status(
        client
            .list_workflows(sched::ListWorkflowsRequest {
                page_size: 1001,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_size",
    );
    assert_status(
        client
            .list_workflows(sched::ListWorkflowsRequest {
                agent_id: "nope".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "agent_id",
    );
    assert_status(
        client
            .update_workflow(sched::UpdateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    id: workflow.id.clone(),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await,
        Code::InvalidArgument,
        "update_mask",
    );
    assert_status(
        client
            .update_workflow(sched::UpdateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    id: workflow.id.clone(),
                    ..Default::default()
                }),
                update_mask: mask(&["agent_id"]),
            })
            .await,
        Code::InvalidArgument,
        "cannot be updated",
    );
    assert_status(
        client
            .update_workflow(sched::UpdateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    id: unknown.clone(),
                    enabled: true,
                    ..Default::default()
                }),
                update_mask: mask(&["enabled"]),
            })
            .await,
        Code::NotFound,
        &unknown,
    );
    assert_status(
        client
            .delete_workflow(sched::DeleteWorkflowRequest {
                workflow_id: unknown.clone(),
            })
            .await,
        Code::NotFound,
        &unknown,
    );
    assert_status(
        client
            .trigger_workflow(sched::TriggerWorkflowRequest {
                workflow_id: unknown.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        &unknown,
    );
    assert_status(
        client
            .trigger_workflow(sched::TriggerWorkflowRequest {
                workflow_id: workflow.id.clone(),
                idempotency_key: "x".repeat(200),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "idempotency_key",
    );
    assert_status(
        client
            .get_task(sched::GetTaskRequest {
                task_id: "nope".into(),
            })
            .await,
        Code::NotFound,
        "nope",
    );
    assert_status(
        client
            .get_task(sched::GetTaskRequest { task_id: "".into() })
            .await,
        Code::InvalidArgument,
        "task_id",
    );
    assert_status(
        client
            .list_tasks(sched::ListTasksRequest {
                workflow_id: workflow.id.clone(),
                state: 42,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "state",
    );
    assert_status(
        client
            .list_tasks(sched::ListTasksRequest {
                workflow_id: unknown.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        &unknown,
    );
    assert_status(
        client
            .list_tasks(sched::ListTasksRequest {
                workflow_id: workflow.id.clone(),
                page_token: "abc".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        client
            .list_runners(sched::ListRunnersRequest {
                agent_id: "nope".into(),
            })
            .await,
        Code::InvalidArgument,
        "agent_id",
    );
    Ok(())
}

#[tokio::test]
async fn grpcurl_sees_the_scheduler() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let Some(grpcurl) = shepherd_testkit::grpcurl()? else {
        return Ok(());
    };
    let addr = stack
        .scheduler
        .as_ref()
        .expect("scheduler")
        .addr
        .to_string();
    let list = grpcurl.run(&["-plaintext", &addr, "list"]).await?;
    assert!(list.contains("shepherd.scheduler.v1.Scheduler"), "{list}");
    assert!(list.contains("grpc.health.v1.Health"), "{list}");
    let check = grpcurl
        .run(&[
            "-plaintext",
            "-d",
            r#"{"service":"shepherd.scheduler.v1.Scheduler"}"#,
            &addr,
            "grpc.health.v1.Health/Check",
        ])
        .await?;
    assert!(check.contains("SERVING"), "{check}");
    Ok(())
}
