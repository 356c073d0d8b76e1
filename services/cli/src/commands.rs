//! What each command does: translate arguments to requests, print results.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use shepherd_proto::agentmanager::v1::{self as am, watch_agent_events_response};
use shepherd_proto::scheduler::v1 as sched;

use crate::cli::{
    AgentCommand, Cli, Command, CreateAgent, CreateWorkflow, EventCommand, Output, RunnerCommand,
    TaskCommand, TriggerWorkflow, WorkflowCommand,
};
use crate::clients::{Clients, UsageError, collect_pages};
use crate::render;

pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut clients = Clients::connect(&cli)?;
    match cli.command {
        Command::Agents(command) => clients.agents(command).await,
        Command::Workflows(command) => clients.workflows(command).await,
        Command::Tasks(command) => clients.tasks(command).await,
        Command::Runners(RunnerCommand::List { agent }) => {
            let agent_id = match agent {
                Some(agent) => clients.agent_id(&agent).await?,
                None => String::new(),
            };
            let runners = clients
                .workflows
                .list_runners(sched::ListRunnersRequest { agent_id })
                .await?
                .into_inner()
                .runners;
            render::many(clients.output, &runners);
            Ok(())
        }
        Command::Events(EventCommand::Watch {
            after,
            agent,
            limit,
        }) => {
            let agent_id = match agent {
                Some(agent) => clients.agent_id(&agent).await?,
                None => String::new(),
            };
            clients.watch(after, agent_id, limit, |_| true).await
        }
        Command::Approvals(command) => clients.approvals(command).await,
        Command::Top => crate::top::run(clients.agents, clients.workflows).await,
        Command::Mcp { allow_writes, http } => match http {
            Some(addr) => {
                crate::mcp::serve_http(clients, allow_writes, &addr, cli.token.clone()).await
            }
            None => crate::mcp::run(clients, allow_writes).await,
        },
        Command::Audit {
            who,
            target,
            since,
            limit,
        } => {
            let request = shepherd_proto::audit::v1::ListAuditEventsRequest {
                who: who.unwrap_or_default(),
                target: target.unwrap_or_default(),
                since: since
                    .and_then(|ago| std::time::SystemTime::now().checked_sub(ago))
                    .map(Into::into),
                page_size: limit,
                ..Default::default()
            };
            let (mut agents, mut workflows) = (clients.agents.clone(), clients.workflows.clone());
            let (manager, scheduler) = tokio::join!(
                agents.list_audit_events(request.clone()),
                workflows.list_audit_events(request)
            );
            let mut events: Vec<render::Audited> = manager?
                .into_inner()
                .events
                .into_iter()
                .map(|event| render::Audited("agent-manager", event))
                .chain(
                    scheduler?
                        .into_inner()
                        .events
                        .into_iter()
                        .map(|event| render::Audited("scheduler", event)),
                )
                .collect();
            // Newest first, across both services (ids are time-ordered).
            events.sort_by(|a, b| b.1.id.cmp(&a.1.id));
            events.truncate(usize::try_from(limit).unwrap_or(0));
            render::many(clients.output, &events);
            Ok(())
        }
        Command::Manager => {
            let info = clients
                .agents
                .get_manager_info(am::GetManagerInfoRequest {})
                .await?
                .into_inner();
            render::one(clients.output, &info);
            Ok(())
        }
    }
}

/// An agent spec file (TOML).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    name: String,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: HashMap<String, String>,
    #[serde(default)]
    labels: HashMap<String, String>,
    #[serde(default)]
    working_dir: String,
    #[serde(default)]
    stopped: bool,
    #[serde(default)]
    restart: RestartFile,
    #[serde(default)]
    limits: LimitsFile,
}

/// `[limits]`: memory = "512MiB", cpus = 0.5, max_processes = 64.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    memory: Option<String>,
    cpus: Option<f64>,
    max_processes: Option<u32>,
}

fn limits(
    memory: Option<u64>,
    cpus: Option<f64>,
    max_processes: Option<u32>,
) -> Option<am::ResourceLimits> {
    (memory.is_some() || cpus.is_some() || max_processes.is_some()).then(|| am::ResourceLimits {
        memory_bytes: memory.unwrap_or(0),
        cpu_cores: cpus.unwrap_or(0.0),
        max_processes: max_processes.unwrap_or(0),
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RestartFile {
    mode: Option<String>,
    max_restarts: Option<u32>,
    window: Option<String>,
    initial_backoff: Option<String>,
    max_backoff: Option<String>,
}

fn restart_mode(text: &str) -> anyhow::Result<am::RestartMode> {
    Ok(match text {
        "never" => am::RestartMode::Never,
        "on-failure" => am::RestartMode::OnFailure,
        "always" => am::RestartMode::Always,
        other => {
            return Err(UsageError(format!(
                "restart mode {other:?}: use never, on-failure or always"
            ))
            .into());
        }
    })
}

fn proto_duration(
    field: &str,
    text: Option<&str>,
) -> anyhow::Result<Option<prost_types::Duration>> {
    let Some(text) = text else { return Ok(None) };
    let duration = humantime::parse_duration(text)
        .map_err(|err| UsageError(format!("{field} {text:?}: {err}")))?;
    Ok(prost_types::Duration::try_from(duration).ok())
}

fn agent_from_file(path: &Path) -> anyhow::Result<am::Agent> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: AgentFile =
        toml::from_str(&text).map_err(|err| UsageError(format!("{}: {err}", path.display())))?;
    let restart = &file.restart;
    let memory = file
        .limits
        .memory
        .as_deref()
        .map(crate::cli::parse_size)
        .transpose()
        .map_err(|err| UsageError(format!("limits.memory: {err}")))?;
    Ok(am::Agent {
        limits: limits(memory, file.limits.cpus, file.limits.max_processes),
        name: file.name,
        command: file.command,
        args: file.args,
        env: file.env,
        labels: file.labels,
        working_dir: file.working_dir,
        desired_state: if file.stopped {
            am::DesiredState::Stopped
        } else {
            am::DesiredState::Running
        } as i32,
        restart_policy: Some(am::RestartPolicy {
            mode: restart_mode(restart.mode.as_deref().unwrap_or("on-failure"))? as i32,
            max_restarts: restart.max_restarts.unwrap_or(0),
            window: proto_duration("restart.window", restart.window.as_deref())?,
            initial_backoff: proto_duration(
                "restart.initial_backoff",
                restart.initial_backoff.as_deref(),
            )?,
            max_backoff: proto_duration("restart.max_backoff", restart.max_backoff.as_deref())?,
        }),
        ..Default::default()
    })
}

fn agent_from_flags(create: CreateAgent) -> anyhow::Result<am::Agent> {
    Ok(am::Agent {
        runtime: if create.external {
            am::Runtime::External
        } else if create.image.is_some() {
            am::Runtime::Kubernetes
        } else {
            am::Runtime::Process
        } as i32,
        image: create.image.unwrap_or_default(),
        limits: limits(create.memory, create.cpus, create.max_processes),
        name: create.name.unwrap_or_default(),
        command: create.command.unwrap_or_default(),
        args: create.args,
        env: create.env.into_iter().collect(),
        labels: create.labels.into_iter().collect(),
        working_dir: create.working_dir.unwrap_or_default(),
        desired_state: if create.stopped {
            am::DesiredState::Stopped
        } else {
            am::DesiredState::Running
        } as i32,
        restart_policy: Some(am::RestartPolicy {
            mode: restart_mode(&create.restart)? as i32,
            max_restarts: create.max_restarts.unwrap_or(0),
            ..Default::default()
        }),
        ..Default::default()
    })
}

impl Clients {
    async fn agents(&mut self, command: AgentCommand) -> anyhow::Result<()> {
        let output = self.output;
        let agent = match command {
            AgentCommand::Create(create) => {
                let agent = match &create.file {
                    Some(path) => agent_from_file(path)?,
                    None => agent_from_flags(create)?,
                };
                self.agents
                    .create_agent(am::CreateAgentRequest { agent: Some(agent) })
                    .await?
                    .into_inner()
            }
            AgentCommand::List { status, labels } => {
                let status = match status {
                    None => am::AgentStatus::Unspecified,
                    Some(s) => am::AgentStatus::from_str_name(&format!(
                        "AGENT_STATUS_{}",
                        s.to_uppercase()
                    ))
                    .ok_or_else(|| {
                        UsageError(format!(
                            "status {s:?}: use pending, starting, ready, exited, failed or stopped"
                        ))
                    })?,
                };
                let labels: HashMap<String, String> = labels.into_iter().collect();
                let all = self.all_agents(status, labels).await?;
                render::many(output, &all);
                return Ok(());
            }
            AgentCommand::Get { agent } => {
                let agent_id = self.agent_id(&agent).await?;
                self.agents
                    .get_agent(am::GetAgentRequest { agent_id })
                    .await?
                    .into_inner()
            }
            AgentCommand::Start { agent } => {
                let agent_id = self.agent_id(&agent).await?;
                self.agents
                    .start_agent(am::StartAgentRequest { agent_id })
                    .await?
                    .into_inner()
            }
            AgentCommand::Stop { agent } => {
                let agent_id = self.agent_id(&agent).await?;
                self.agents
                    .stop_agent(am::StopAgentRequest { agent_id })
                    .await?
                    .into_inner()
            }
            AgentCommand::Restart { agent } => {
                let agent_id = self.agent_id(&agent).await?;
                self.agents
                    .restart_agent(am::RestartAgentRequest { agent_id })
                    .await?
                    .into_inner()
            }
            AgentCommand::RotateCredential { agent } => {
                let agent_id = self.agent_id(&agent).await?;
                self.agents
                    .rotate_agent_credential(am::RotateAgentCredentialRequest { agent_id })
                    .await?
                    .into_inner()
            }
            AgentCommand::Delete { agent } => {
                let agent_id = self.agent_id(&agent).await?;
                self.agents
                    .delete_agent(am::DeleteAgentRequest {
                        agent_id: agent_id.clone(),
                    })
                    .await?;
                eprintln!("deleted agent {agent_id}");
                return Ok(());
            }
            AgentCommand::Logs {
                agent,
                stderr,
                lines,
            } => {
                let agent_id = self.agent_id(&agent).await?;
                let stream = if stderr {
                    am::LogStream::Stderr
                } else {
                    am::LogStream::Stdout
                };
                let lines = self
                    .agents
                    .get_agent_logs(am::GetAgentLogsRequest {
                        agent_id,
                        stream: stream as i32,
                        tail_lines: lines,
                    })
                    .await?
                    .into_inner()
                    .lines;
                match output {
                    Output::Json => println!("{}", serde_json::json!(lines)),
                    Output::Table => lines.iter().for_each(|line| println!("{line}")),
                }
                return Ok(());
            }
        };
        render::one(output, &agent);
        Ok(())
    }

    async fn workflows(&mut self, command: WorkflowCommand) -> anyhow::Result<()> {
        let output = self.output;
        let workflow = match command {
            WorkflowCommand::Create(create) => self.create_workflow(create).await?,
            WorkflowCommand::List { agent, enabled } => {
                let agent_id = match agent {
                    Some(agent) => self.agent_id(&agent).await?,
                    None => String::new(),
                };
                let all = self.all_workflows(agent_id, enabled).await?;
                render::many(output, &all);
                return Ok(());
            }
            WorkflowCommand::Get { workflow } => {
                let workflow_id = self.workflow_id(&workflow).await?;
                self.workflows
                    .get_workflow(sched::GetWorkflowRequest { workflow_id })
                    .await?
                    .into_inner()
            }
            WorkflowCommand::Enable { workflow } => self.set_enabled(&workflow, true).await?,
            WorkflowCommand::Disable { workflow } => self.set_enabled(&workflow, false).await?,
            WorkflowCommand::Delete { workflow } => {
                let workflow_id = self.workflow_id(&workflow).await?;
                self.workflows
                    .delete_workflow(sched::DeleteWorkflowRequest {
                        workflow_id: workflow_id.clone(),
                    })
                    .await?;
                eprintln!("deleted workflow {workflow_id}");
                return Ok(());
            }
            WorkflowCommand::Why { workflow } => {
                let workflow_id = self.workflow_id(&workflow).await?;
                let diagnosis = self
                    .workflows
                    .explain_workflow(sched::ExplainWorkflowRequest { workflow_id })
                    .await?
                    .into_inner();
                render::one(output, &diagnosis);
                return Ok(());
            }
            WorkflowCommand::Trigger(trigger) => {
                let task = self.trigger(trigger).await?;
                render::one(output, &task);
                return Ok(());
            }
            WorkflowCommand::RotateSecret { workflow } => {
                let workflow_id = self.workflow_id(&workflow).await?;
                self.workflows
                    .rotate_webhook_secret(sched::RotateWebhookSecretRequest { workflow_id })
                    .await?
                    .into_inner()
            }
        };
        render::one(output, &workflow);
        Ok(())
    }

    async fn create_workflow(&mut self, create: CreateWorkflow) -> anyhow::Result<sched::Workflow> {
        use sched::trigger::Kind;
        let agent_id = self.agent_id(&create.agent).await?;
        let duration = |d: Duration| prost_types::Duration::try_from(d).ok();
        let kind = if let Some(period) = create.interval {
            Kind::Interval(sched::IntervalTrigger {
                period: duration(period),
            })
        } else if let Some(expression) = create.cron {
            Kind::Cron(sched::CronTrigger { expression })
        } else if let Some(delay) = create.delay {
            Kind::Delay(sched::DelayTrigger {
                delay: duration(delay),
            })
        } else if let Some(parent) = &create.after {
            let on = match create.on.as_str() {
                "succeeded" => sched::ChainOn::Succeeded,
                "failed" => sched::ChainOn::Failed,
                "any" => sched::ChainOn::Any,
                other => {
                    return Err(UsageError(format!(
                        "--on {other:?}: use succeeded, failed or any"
                    ))
                    .into());
                }
            };
            Kind::Chain(sched::ChainTrigger {
                parent_workflow_id: self.workflow_id(parent).await?,
                on: on as i32,
            })
        } else if let Some(agent) = &create.on_agent_restart {
            let agent_id = match agent.as_str() {
                "" => String::new(),
                agent => self.agent_id(agent).await?,
            };
            Kind::AgentRestart(sched::AgentRestartTrigger { agent_id })
        } else if create.webhook {
            Kind::Webhook(sched::WebhookTrigger {
                events: create.events,
                actions: create.actions,
                mapping: create.mapping.into_iter().collect(),
                ..Default::default()
            })
        } else {
            Kind::Manual(sched::ManualTrigger {})
        };
        Ok(self
            .workflows
            .create_workflow(sched::CreateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    name: create.name,
                    agent_id,
                    enabled: !create.disabled,
                    trigger: Some(sched::Trigger { kind: Some(kind) }),
                    prompt_template: create.template,
                    max_concurrency: create.max_concurrency,
                    max_attempts: create.max_attempts,
                    tool_policy: Some(sched::ToolPolicy {
                        allowed_tools: create.allowed_tools,
                        denied_tools: create.denied_tools,
                        ask_tools: create.ask_tools,
                    }),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner())
    }

    async fn set_enabled(
        &mut self,
        workflow: &str,
        enabled: bool,
    ) -> anyhow::Result<sched::Workflow> {
        let id = self.workflow_id(workflow).await?;
        Ok(self
            .workflows
            .update_workflow(sched::UpdateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    id,
                    enabled,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["enabled".into()],
                }),
            })
            .await?
            .into_inner())
    }

    async fn trigger(&mut self, trigger: TriggerWorkflow) -> anyhow::Result<sched::Task> {
        let workflow_id = self.workflow_id(&trigger.workflow).await?;
        Ok(self
            .workflows
            .trigger_workflow(sched::TriggerWorkflowRequest {
                workflow_id,
                idempotency_key: trigger.key.unwrap_or_default(),
                fields: Some(sched::TaskFields {
                    title: trigger.title,
                    body: trigger.body,
                    url: trigger.url,
                    labels: trigger.labels,
                    metadata: trigger.metadata.into_iter().collect(),
                }),
                timeout: None,
            })
            .await?
            .into_inner())
    }

    async fn tasks(&mut self, command: TaskCommand) -> anyhow::Result<()> {
        match command {
            TaskCommand::List {
                workflow,
                state,
                dead_letter,
            } => {
                let workflow_id = self.workflow_id(&workflow).await?;
                let state = match state {
                    None => sched::TaskState::Unspecified,
                    Some(s) => {
                        sched::TaskState::from_str_name(&format!("TASK_STATE_{}", s.to_uppercase()))
                            .ok_or_else(|| {
                                UsageError(format!(
                                    "state {s:?}: use pending, dispatched, succeeded, failed, timed_out or cancelled"
                                ))
                            })?
                    }
                };
                let client = self.workflows.clone();
                let all = collect_pages(|page_token| {
                    let mut client = client.clone();
                    let request = sched::ListTasksRequest {
                        workflow_id: workflow_id.clone(),
                        state: state as i32,
                        page_size: 1000,
                        page_token,
                        dead_letter,
                    };
                    async move {
                        let page = client.list_tasks(request).await?.into_inner();
                        Ok((page.tasks, page.next_page_token))
                    }
                })
                .await?;
                render::many(self.output, &all);
            }
            TaskCommand::Get { task } => {
                let task = self
                    .workflows
                    .get_task(sched::GetTaskRequest { task_id: task })
                    .await?
                    .into_inner();
                render::one(self.output, &task);
            }
            TaskCommand::Cancel { task } => {
                let task = self
                    .workflows
                    .cancel_task(sched::CancelTaskRequest { task_id: task })
                    .await?
                    .into_inner();
                render::one(self.output, &task);
            }
            TaskCommand::Watch {
                task,
                workflow,
                after,
            } => {
                let workflow = match workflow {
                    Some(workflow) => self.workflow_id(&workflow).await?,
                    None => String::new(),
                };
                self.watch_tasks(after, workflow, task.unwrap_or_default())
                    .await?;
            }
        }
        Ok(())
    }

    /// Follows the task change log; on a broken stream, resumes after the
    /// last cursor seen. Following one task ends when it is final.
    async fn watch_tasks(
        &mut self,
        after: String,
        workflow_id: String,
        task_id: String,
    ) -> anyhow::Result<()> {
        let mut cursor = after;
        let mut failures = 0u32;
        loop {
            let stream = self
                .workflows
                .watch_tasks(sched::WatchTasksRequest {
                    after_cursor: cursor.clone(),
                    workflow_id: workflow_id.clone(),
                    task_id: task_id.clone(),
                })
                .await;
            let mut stream = match stream {
                Ok(stream) => stream.into_inner(),
                Err(status) if failures < 5 && status.code() == tonic::Code::Unavailable => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(200 << failures)).await;
                    continue;
                }
                Err(status) => return Err(status.into()),
            };
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        failures = 0;
                        match message.kind {
                            Some(sched::watch_tasks_response::Kind::Event(event)) => {
                                render::task_event(self.output, &event);
                                cursor = event.cursor.clone();
                                let done = event.progress.is_none()
                                    && !matches!(
                                        event.state(),
                                        sched::TaskState::Pending | sched::TaskState::Dispatched
                                    );
                                if !task_id.is_empty() && done {
                                    return Ok(());
                                }
                            }
                            Some(sched::watch_tasks_response::Kind::Heartbeat(beat)) => {
                                cursor = beat.cursor;
                            }
                            None => {}
                        }
                    }
                    Ok(None) | Err(_) => {
                        eprintln!("task stream interrupted; resuming after {cursor}");
                        break;
                    }
                }
            }
        }
    }

    /// Follows the event log; on a broken stream, resumes after the last
    /// event printed (so nothing is shown twice or skipped).
    /// Prints the events after `after` that `keep` selects, live, resuming
    /// after disconnects; returns after `limit` of them (if given).
    pub(crate) async fn watch(
        &mut self,
        after: u64,
        agent_id: String,
        limit: Option<usize>,
        keep: fn(&am::AgentEvent) -> bool,
    ) -> anyhow::Result<()> {
        let mut cursor = after;
        let mut printed = 0usize;
        let mut failures = 0u32;
        loop {
            let stream = self
                .agents
                .watch_agent_events(am::WatchAgentEventsRequest {
                    after_sequence: cursor,
                    agent_id: agent_id.clone(),
                    ..Default::default()
                })
                .await;
            let mut stream = match stream {
                Ok(stream) => stream.into_inner(),
                Err(status) if failures < 5 && status.code() == tonic::Code::Unavailable => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(200 << failures)).await;
                    continue;
                }
                Err(status) => return Err(status.into()),
            };
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        failures = 0;
                        match message.kind {
                            Some(watch_agent_events_response::Kind::Event(event)) => {
                                cursor = event.sequence;
                                if !keep(&event) {
                                    continue;
                                }
                                render::event(self.output, &event);
                                printed += 1;
                                if limit.is_some_and(|limit| printed >= limit) {
                                    return Ok(());
                                }
                            }
                            Some(watch_agent_events_response::Kind::ResyncRequired(resync)) => {
                                eprintln!("warning: {}", resync.message);
                                cursor = resync.pruned_through_sequence;
                            }
                            Some(watch_agent_events_response::Kind::Heartbeat(_)) | None => {}
                        }
                    }
                    Ok(None) | Err(_) => {
                        eprintln!("event stream interrupted; resuming after {cursor}");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::parse_size;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512 kb"), Ok(512 << 10));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
