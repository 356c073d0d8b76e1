//! Every caller has a role. Every RPC of both services (found in their
//! descriptors, so a new one is covered the day it is added) is called with
//! the credential of every role, and the answer must match the README's
//! role table: allowed (the call reaches the service), or
//! PERMISSION_DENIED naming the roles that may make it. Then calls that
//! would change something, made whole and valid by roles that may not,
//! store nothing.

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use prost_types::FileDescriptorSet;
use shepherd_e2e::raw::{raw_call_as, raw_stream_call_as};
use shepherd_e2e::{Stack, StackOptions};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1 as sched;
use tonic::Code;

/// Each role's credential (admin: the stack's own token).
const ROLES: &[(&str, &str)] = &[
    ("admin", "admin-token"),
    ("operator", "operator-token"),
    ("approver", "approver-token"),
    ("viewer", "viewer-token"),
    ("service", "service-token"),
];

fn options() -> StackOptions {
    StackOptions {
        token: Some("admin-token".to_owned()),
        env: vec![(
            "SHEPHERD_API_TOKENS",
            "ops:operator=operator-token,alice:approver=approver-token,\
             vic:viewer=viewer-token,sched:service=service-token"
                .to_owned(),
        )],
        ..StackOptions::default()
    }
}

/// `(service, RPC) -> roles allowed`, from the README's role table (rows
/// `| agent-manager | GetAgent | read | admin, operator, ... |`).
fn readme_table() -> anyhow::Result<HashMap<(String, String), BTreeSet<String>>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let mut table = HashMap::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [
            "",
            service @ ("agent-manager" | "scheduler"),
            rpc,
            _permission,
            roles,
            "",
        ] = cells.as_slice()
        {
            let roles = roles.split(',').map(|r| r.trim().to_owned()).collect();
            table.insert(
                ((*service).to_owned(), rpc.trim_matches('`').to_owned()),
                roles,
            );
        }
    }
    anyhow::ensure!(!table.is_empty(), "no role table in the README");
    Ok(table)
}

#[tokio::test]
async fn every_rpc_answers_every_role_as_the_readme_says() -> anyhow::Result<()> {
    let stack = Stack::start(options()).await?;
    let table = readme_table()?;
    let manager = stack.manager.url();
    let scheduler = stack.scheduler_url();
    let set = FileDescriptorSet::decode(shepherd_proto::FILE_DESCRIPTOR_SET)?;
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &set.file {
        let (service_name, url) = match file.package() {
            "shepherd.agentmanager.v1" => ("agent-manager", &manager),
            "shepherd.scheduler.v1" => ("scheduler", &scheduler),
            _ => continue,
        };
        for service in &file.service {
            for method in &service.method {
                if method.client_streaming() {
                    continue; // the agent session: its own credential, not a role
                }
                let Some(allowed) = table.get(&(service_name.to_owned(), method.name().to_owned()))
                else {
                    wrong.push(format!(
                        "{service_name} {} is not in the README's role table",
                        method.name()
                    ));
                    continue;
                };
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                for (role, token) in ROLES {
                    let status = if method.server_streaming() {
                        raw_stream_call_as(url, &path, Vec::new(), Some(token)).await
                    } else {
                        raw_call_as(url, &path, Vec::new(), Some(token)).await
                    };
                    let denied = status.code() == Code::PermissionDenied;
                    let should_be = !allowed.contains(*role);
                    if denied != should_be || status.code() == Code::Unauthenticated {
                        wrong.push(format!(
                            "{} as {role}: {:?} {}",
                            method.name(),
                            status.code(),
                            status.message()
                        ));
                    }
                    if denied && !status.message().contains("needs the role") {
                        wrong.push(format!("{} as {role}: {}", method.name(), status.message()));
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{checked} calls, wrong:\n{}",
        wrong.join("\n")
    );
    assert!(checked > 100, "{checked} calls");
    Ok(())
}

/// Rows a denied call could have written.
async fn stored(stack: &Stack) -> anyhow::Result<Vec<i64>> {
    let db = stack.db.client().await?;
    let mut counts = Vec::new();
    for table in [
        "agent_manager.agents",
        "agent_manager.tasks",
        "agent_manager.approvals",
        "scheduler.workflows",
        "scheduler.tasks",
    ] {
        counts.push(
            db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await?
                .get(0),
        );
    }
    Ok(counts)
}

fn client_as<T>(
    token: &str,
    channel: tonic::transport::Channel,
    make: impl FnOnce(
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            shepherd_platform::auth::ClientMetadata,
        >,
    ) -> T,
) -> anyhow::Result<T> {
    let auth = shepherd_platform::auth::ClientMetadata::new(Some(token))?;
    Ok(make(tonic::service::interceptor::InterceptedService::new(
        channel, auth,
    )))
}

#[tokio::test]
async fn a_valid_call_outside_the_role_stores_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start(options()).await?;
    let agent = stack.create_agent("kept", am::RestartMode::Never).await?;
    let workflow = stack
        .create_workflow("kept", &agent.id, true, "echo {{title}}")
        .await?;
    let before = stored(&stack).await?;
    let manager = shepherd_testkit::channel(&stack.manager.url()).await?;
    let scheduler = shepherd_testkit::channel(&stack.scheduler_url()).await?;
    for (role, token) in [
        ("approver", "approver-token"),
        ("viewer", "viewer-token"),
        ("service", "service-token"),
    ] {
        let mut agents = client_as(
            token,
            manager.clone(),
            am::agent_manager_client::AgentManagerClient::new,
        )?;
        let mut workflows = client_as(
            token,
            scheduler.clone(),
            sched::scheduler_client::SchedulerClient::new,
        )?;
        let create = agents
            .create_agent(am::CreateAgentRequest {
                agent: Some(am::Agent {
                    name: format!("by-{role}"),
                    command: "/bin/true".to_owned(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(create.code(), Code::PermissionDenied, "{role}: {create:?}");
        let delete = agents
            .delete_agent(am::DeleteAgentRequest {
                agent_id: agent.id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(delete.code(), Code::PermissionDenied, "{role}: {delete:?}");
        let trigger = workflows
            .trigger_workflow(sched::TriggerWorkflowRequest {
                workflow_id: workflow.id.clone(),
                idempotency_key: format!("by-{role}"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            trigger.code(),
            Code::PermissionDenied,
            "{role}: {trigger:?}"
        );
    }
    // An operator cannot decide approvals, nor prune the event log.
    let mut operator = client_as(
        "operator-token",
        manager.clone(),
        am::agent_manager_client::AgentManagerClient::new,
    )?;
    let decide = operator
        .decide_approval(am::DecideApprovalRequest {
            approval_id: uuid::Uuid::now_v7().to_string(),
            decision: am::Decision::Approve as i32,
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(decide.code(), Code::PermissionDenied);
    assert!(
        decide.message().contains("admin or approver"),
        "{}",
        decide.message()
    );
    assert_eq!(
        stored(&stack).await?,
        before,
        "a denied call stored something"
    );
    assert!(stack.agent(&agent.id).await.is_ok());
    Ok(())
}

/// Every call that changes (or tries to change) something is in the audit
/// log: who, role, RPC, target, outcome, peer; a denied attempt too. Reads
/// are not; the log is for admins only; `shepherd audit` shows both
/// services' entries.
#[tokio::test]
async fn every_change_is_audited_with_who_role_target_and_outcome() -> anyhow::Result<()> {
    let mut stack = Stack::start(options()).await?;
    let manager = shepherd_testkit::channel(&stack.manager.url()).await?;
    let scheduler = shepherd_testkit::channel(&stack.scheduler_url()).await?;
    let mut ops = client_as(
        "operator-token",
        manager.clone(),
        am::agent_manager_client::AgentManagerClient::new,
    )?;
    let mut vic = client_as(
        "viewer-token",
        manager.clone(),
        am::agent_manager_client::AgentManagerClient::new,
    )?;
    let created = ops
        .create_agent(am::CreateAgentRequest {
            agent: Some(am::Agent {
                name: "audited".to_owned(),
                command: "/bin/sleep".to_owned(),
                args: vec!["600".to_owned()],
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let denied = vic
        .stop_agent(am::StopAgentRequest {
            agent_id: created.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    vic.get_agent(am::GetAgentRequest {
        agent_id: created.id.clone(),
    })
    .await?;
    ops.delete_agent(am::DeleteAgentRequest {
        agent_id: created.id.clone(),
    })
    .await?;
    let mut workflows = client_as(
        "operator-token",
        scheduler.clone(),
        sched::scheduler_client::SchedulerClient::new,
    )?;
    let missing = workflows
        .delete_workflow(sched::DeleteWorkflowRequest {
            workflow_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let audit = stack
        .agents
        .list_audit_events(shepherd_proto::audit::v1::ListAuditEventsRequest {
            target: created.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .events;
    let seen: Vec<(&str, &str, &str, &str)> = audit
        .iter()
        .map(|e| {
            (
                e.who.as_str(),
                e.role.as_str(),
                e.rpc.as_str(),
                e.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("ops", "operator", "DeleteAgent", "OK"),
            ("ops", "operator", "CreateAgent", "OK"),
        ],
        "newest first: {audit:?}"
    );
    assert!(
        audit
            .iter()
            .all(|e| e.peer == "127.0.0.1" && e.time.is_some()),
        "{audit:?}"
    );
    // The denied attempt is there too (it never reached a handler: no
    // target), and the read is not.
    let by_vic = stack
        .agents
        .list_audit_events(shepherd_proto::audit::v1::ListAuditEventsRequest {
            who: "vic".to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .events;
    let seen: Vec<(&str, &str, &str)> = by_vic
        .iter()
        .map(|e| (e.rpc.as_str(), e.outcome.as_str(), e.role.as_str()))
        .collect();
    assert_eq!(
        seen,
        [("StopAgent", "PERMISSION_DENIED", "viewer")],
        "{by_vic:?}"
    );

    // The log is an admin's.
    let refused = vic
        .list_audit_events(shepherd_proto::audit::v1::ListAuditEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // Both services, through the CLI.
    let output = tokio::process::Command::new(shepherd_testkit::bin_path("shepherd")?)
        .args(["--output", "json", "audit", "--who", "ops"])
        .env("SHEPHERD_AGENT_MANAGER_URL", stack.manager.url())
        .env("SHEPHERD_SCHEDULER_URL", stack.scheduler_url())
        .env("SHEPHERD_TOKEN", "admin-token")
        .output()
        .await?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let entries: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let rpcs: Vec<(&str, &str)> = entries
        .as_array()
        .map(|all| {
            all.iter()
                .map(|e| {
                    (
                        e["service"].as_str().unwrap_or(""),
                        e["rpc"].as_str().unwrap_or(""),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        rpcs,
        [
            ("scheduler", "DeleteWorkflow"),
            ("agent-manager", "DeleteAgent"),
            ("agent-manager", "CreateAgent")
        ]
    );
    let _ = &mut stack;
    Ok(())
}
