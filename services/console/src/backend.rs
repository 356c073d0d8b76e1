//! The console's view of the fleet, through the services' public gRPC APIs
//! only. Every wire type stops here: the HTTP layer gets JSON views.

use std::path::Path;
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use shepherd_proto::agentmanager::v1::{
    self as am, agent_event, agent_manager_client::AgentManagerClient, watch_agent_events_response,
};
use shepherd_proto::scheduler::v1::{
    self as sched, scheduler_client::SchedulerClient, watch_tasks_response,
};

use shepherd_client::Authed;

/// Most agents, workflows or events one view shows.
const MAX_ROWS: usize = 1000;
/// Events of one agent's timeline.
const TIMELINE: usize = 200;

#[derive(Clone)]
pub struct Backend {
    agents: AgentManagerClient<Authed>,
    workflows: SchedulerClient<Authed>,
}

/// One item of a live feed: its resume cursor and what to send.
pub struct LiveItem {
    pub cursor: String,
    pub data: Value,
}

impl Backend {
    pub fn connect(
        manager_url: &str,
        scheduler_url: &str,
        token: Option<&str>,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let api = shepherd_client::Shepherd::connect(shepherd_client::Target {
            agent_manager_url: manager_url,
            scheduler_url,
            token,
            ca_file,
        })?;
        Ok(Self {
            agents: api.agents,
            workflows: api.workflows,
        })
    }

    /// Every agent (the first MAX_ROWS), optionally with a label.
    pub async fn fleet(&self, label: Option<(String, String)>) -> Result<Value, tonic::Status> {
        let mut client = self.agents.clone();
        let mut agents = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_agents(am::ListAgentsRequest {
                    page_size: 500,
                    page_token: page_token.clone(),
                    labels: label.clone().into_iter().collect(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            agents.extend(page.agents.into_iter().map(agent_view));
            page_token = page.next_page_token;
            if page_token.is_empty() || agents.len() >= MAX_ROWS {
                break;
            }
        }
        Ok(Value::Array(agents))
    }

    pub async fn agent(&self, id: &str) -> Result<Value, tonic::Status> {
        let agent = self
            .agents
            .clone()
            .get_agent(am::GetAgentRequest {
                agent_id: id.to_owned(),
            })
            .await?
            .into_inner();
        Ok(agent_view(agent))
    }

    /// The agent's recent events (its timeline), oldest first.
    pub async fn timeline(&self, id: &str) -> Result<Value, tonic::Status> {
        let mut stream = self
            .agents
            .clone()
            .watch_agent_events(am::WatchAgentEventsRequest {
                after_sequence: 0,
                agent_id: id.to_owned(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut events = std::collections::VecDeque::new();
        let read = async {
            while let Some(message) = stream.message().await? {
                match message.kind {
                    Some(watch_agent_events_response::Kind::Event(event)) => {
                        if events.len() == TIMELINE {
                            events.pop_front();
                        }
                        events.push_back(event_view(event));
                    }
                    // Caught up.
                    Some(watch_agent_events_response::Kind::Heartbeat(_)) => break,
                    _ => {}
                }
            }
            Ok::<(), tonic::Status>(())
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("reading the agent's events"))??;
        Ok(Value::Array(events.into()))
    }

    pub async fn logs(&self, id: &str, stderr: bool, lines: i32) -> Result<Value, tonic::Status> {
        let response = self
            .agents
            .clone()
            .get_agent_logs(am::GetAgentLogsRequest {
                agent_id: id.to_owned(),
                stream: if stderr {
                    am::LogStream::Stderr
                } else {
                    am::LogStream::Stdout
                } as i32,
                tail_lines: lines,
            })
            .await?
            .into_inner();
        Ok(json!(response.lines))
    }

    /// Start, stop or restart an agent.
    pub async fn agent_action(&self, id: &str, action: &str) -> Result<Value, tonic::Status> {
        let mut client = self.agents.clone();
        let agent_id = id.to_owned();
        let agent = match action {
            "start" => client.start_agent(am::StartAgentRequest { agent_id }).await,
            "stop" => client.stop_agent(am::StopAgentRequest { agent_id }).await,
            "restart" => {
                client
                    .restart_agent(am::RestartAgentRequest { agent_id })
                    .await
            }
            other => {
                return Err(tonic::Status::invalid_argument(format!(
                    "unknown action {other:?}: start, stop or restart"
                )));
            }
        }?;
        Ok(agent_view(agent.into_inner()))
    }

    /// Workflows with their runners (as the scheduler replica asked sees
    /// them), optionally one agent's.
    pub async fn workflows(&self, agent: Option<&str>) -> Result<Value, tonic::Status> {
        let mut client = self.workflows.clone();
        let mut workflows = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_workflows(sched::ListWorkflowsRequest {
                    page_size: 500,
                    page_token: page_token.clone(),
                    agent_id: agent.unwrap_or_default().to_owned(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            workflows.extend(page.workflows);
            page_token = page.next_page_token;
            if page_token.is_empty() || workflows.len() >= MAX_ROWS {
                break;
            }
        }
        let runners = client
            .list_runners(sched::ListRunnersRequest {
                agent_id: agent.unwrap_or_default().to_owned(),
            })
            .await?
            .into_inner()
            .runners;
        let views = workflows
            .into_iter()
            .map(|workflow| {
                let runner = runners.iter().find(|r| r.workflow_id == workflow.id);
                workflow_view(workflow, runner)
            })
            .collect();
        Ok(Value::Array(views))
    }

    /// Every concurrency key and budget, for the workflows page.
    pub async fn limits(&self) -> Result<Value, tonic::Status> {
        let mut client = self.workflows.clone();
        let keys = client
            .list_concurrency_keys(sched::ListConcurrencyKeysRequest {})
            .await?
            .into_inner()
            .keys;
        let budgets = client
            .list_budgets(sched::ListBudgetsRequest {})
            .await?
            .into_inner()
            .budgets;
        Ok(json!({
            "keys": keys.into_iter().map(|key| json!({
                "name": key.name,
                "max_running": key.max_running,
                "running": key.running,
                "waiting": key.waiting,
                "rate": if key.rate_limit == 0 {
                    String::new()
                } else {
                    format!("{} per {}s", key.rate_limit, key.rate_period.map_or(0, |p| p.seconds))
                },
            })).collect::<Vec<_>>(),
            "budgets": budgets.into_iter().map(budget_view).collect::<Vec<_>>(),
        }))
    }

    pub async fn workflow(&self, id: &str) -> Result<Value, tonic::Status> {
        let mut client = self.workflows.clone();
        let workflow = client
            .get_workflow(sched::GetWorkflowRequest {
                workflow_id: id.to_owned(),
            })
            .await?
            .into_inner();
        // The diagnosis carries the runner, the lease, the queue and why:
        // one call for all of them.
        let diagnosis = client
            .explain_workflow(sched::ExplainWorkflowRequest {
                workflow_id: id.to_owned(),
            })
            .await?
            .into_inner();
        let runner = sched::Runner {
            state: diagnosis.runner_state,
            reason: diagnosis.runner_reason.clone(),
            ..Default::default()
        };
        let mut view = workflow_view(workflow, Some(&runner));
        view["queue_depth"] = json!(diagnosis.pending.to_string());
        view["lease_holder"] = json!(diagnosis.lease_holder);
        view["lease_term"] = json!(diagnosis.lease_term);
        view["verdict"] = json!(diagnosis.summary);
        Ok(view)
    }

    /// Enable, disable or trigger a workflow.
    pub async fn workflow_action(
        &self,
        id: &str,
        action: &str,
        title: &str,
    ) -> Result<Value, tonic::Status> {
        let mut client = self.workflows.clone();
        match action {
            "enable" | "disable" => {
                let workflow = client
                    .update_workflow(sched::UpdateWorkflowRequest {
                        workflow: Some(sched::Workflow {
                            id: id.to_owned(),
                            enabled: action == "enable",
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["enabled".into()],
                        }),
                    })
                    .await?
                    .into_inner();
                Ok(workflow_view(workflow, None))
            }
            "trigger" => {
                let task = client
                    .trigger_workflow(sched::TriggerWorkflowRequest {
                        workflow_id: id.to_owned(),
                        idempotency_key: String::new(),
                        fields: Some(sched::TaskFields {
                            title: title.to_owned(),
                            ..Default::default()
                        }),
                        timeout: None,
                        priority: 0,
                    })
                    .await?
                    .into_inner();
                Ok(task_view(task))
            }
            other => Err(tonic::Status::invalid_argument(format!(
                "unknown action {other:?}: enable, disable or trigger"
            ))),
        }
    }

    /// A workflow's newest tasks.
    pub async fn tasks(&self, workflow: &str) -> Result<Value, tonic::Status> {
        let tasks = self
            .workflows
            .clone()
            .list_tasks(sched::ListTasksRequest {
                workflow_id: workflow.to_owned(),
                page_size: 100,
                ..Default::default()
            })
            .await?
            .into_inner()
            .tasks;
        Ok(Value::Array(tasks.into_iter().map(task_view).collect()))
    }

    pub async fn task(&self, id: &str) -> Result<Value, tonic::Status> {
        let task = self
            .workflows
            .clone()
            .get_task(sched::GetTaskRequest {
                task_id: id.to_owned(),
            })
            .await?
            .into_inner();
        Ok(task_view(task))
    }

    /// The newest audit entries of both services (the console's credential
    /// must be an admin's), newest first.
    pub async fn audit(&self) -> Result<Value, tonic::Status> {
        use shepherd_proto::audit::v1::ListAuditEventsRequest;
        let request = ListAuditEventsRequest {
            page_size: 100,
            ..Default::default()
        };
        let (mut agents, mut workflows) = (self.agents.clone(), self.workflows.clone());
        let (manager, scheduler) = tokio::join!(
            agents.list_audit_events(request.clone()),
            workflows.list_audit_events(request)
        );
        let mut entries: Vec<(&str, shepherd_proto::audit::v1::AuditEvent)> = manager?
            .into_inner()
            .events
            .into_iter()
            .map(|event| ("agent-manager", event))
            .chain(
                scheduler?
                    .into_inner()
                    .events
                    .into_iter()
                    .map(|event| ("scheduler", event)),
            )
            .collect();
        // Ids are time-ordered (UUID v7).
        entries.sort_by(|a, b| b.1.id.cmp(&a.1.id));
        entries.truncate(100);
        Ok(Value::Array(
            entries
                .into_iter()
                .map(|(service, event)| {
                    json!({
                        "service": service,
                        "time": time(event.time),
                        "who": event.who,
                        "role": event.role,
                        "rpc": event.rpc,
                        "target": event.target,
                        "outcome": event.outcome,
                        "peer": event.peer,
                    })
                })
                .collect(),
        ))
    }

    pub async fn cancel_task(&self, id: &str) -> Result<Value, tonic::Status> {
        let task = self
            .workflows
            .clone()
            .cancel_task(sched::CancelTaskRequest {
                task_id: id.to_owned(),
            })
            .await?
            .into_inner();
        Ok(task_view(task))
    }

    /// Agent events after `after` (None: from now on), live.
    pub async fn agent_feed(
        &self,
        after: Option<u64>,
    ) -> Result<impl Stream<Item = Result<LiveItem, tonic::Status>> + use<>, tonic::Status> {
        let mut client = self.agents.clone();
        let after = match after {
            Some(after) => after,
            None => {
                client
                    .get_manager_info(am::GetManagerInfoRequest {})
                    .await?
                    .into_inner()
                    .latest_sequence
            }
        };
        let stream = client
            .watch_agent_events(am::WatchAgentEventsRequest {
                after_sequence: after,
                agent_id: String::new(),
                ..Default::default()
            })
            .await?
            .into_inner();
        // The first item names the cursor, so a browser that reconnects
        // before any event resumes from here.
        let start = futures_util::stream::once(async move {
            Ok(LiveItem {
                cursor: after.to_string(),
                data: json!({"kind": "hello"}),
            })
        });
        let events = stream.filter_map(|message| async move {
            match message {
                Err(status) => Some(Err(status)),
                Ok(message) => match message.kind {
                    Some(watch_agent_events_response::Kind::Event(event)) => Some(Ok(LiveItem {
                        cursor: event.sequence.to_string(),
                        data: event_view(event),
                    })),
                    Some(watch_agent_events_response::Kind::ResyncRequired(resync)) => {
                        Some(Ok(LiveItem {
                            cursor: resync.pruned_through_sequence.to_string(),
                            data: json!({"kind": "resync", "detail": resync.message}),
                        }))
                    }
                    _ => None,
                },
            }
        });
        Ok(start.chain(events))
    }

    /// Task changes of a workflow (or one task) after `after`, live.
    pub async fn task_feed(
        &self,
        after: String,
        workflow: String,
        task: String,
    ) -> Result<impl Stream<Item = Result<LiveItem, tonic::Status>> + use<>, tonic::Status> {
        let stream = self
            .workflows
            .clone()
            .watch_tasks(sched::WatchTasksRequest {
                after_cursor: after,
                workflow_id: workflow,
                task_id: task,
            })
            .await?
            .into_inner();
        Ok(stream.filter_map(|message| async move {
            match message {
                Err(status) => Some(Err(status)),
                Ok(message) => match message.kind {
                    Some(watch_tasks_response::Kind::Event(event)) => Some(Ok(LiveItem {
                        cursor: event.cursor.clone(),
                        data: task_event_view(event),
                    })),
                    _ => None,
                },
            }
        }))
    }
}

fn time(value: Option<prost_types::Timestamp>) -> Value {
    value
        .and_then(|t| SystemTime::try_from(t).ok())
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(Value::Null, |since| json!(since.as_millis() as u64))
}

use shepherd_proto::short_name as short;

fn agent_view(agent: am::Agent) -> Value {
    json!({
        "id": agent.id,
        "name": agent.name,
        "status": short(agent.status().as_str_name(), "AGENT_STATUS_"),
        "status_message": agent.status_message,
        "desired_state": short(agent.desired_state().as_str_name(), "DESIRED_STATE_"),
        "generation": agent.generation,
        "restarts": agent.restart_count,
        "pid": agent.pid,
        "runtime": short(agent.runtime().as_str_name(), "RUNTIME_"),
        "node": agent.node,
        "labels": agent.labels,
        "cpu_cores": agent.usage.as_ref().map(|u| u.cpu_cores),
        "memory_bytes": agent.usage.as_ref().map(|u| u.memory_bytes),
        "processes": agent.usage.as_ref().map(|u| u.processes),
        "exit_reason": short(agent.exit_reason().as_str_name(), "EXIT_REASON_"),
        "since": time(agent.update_time),
        "created": time(agent.create_time),
    })
}

/// "deploy for task T: pending".
fn approval_line(approval: Option<am::Approval>) -> String {
    approval
        .map(|a| {
            let state = short(a.state().as_str_name(), "APPROVAL_STATE_");
            format!(
                "{} for task {}: {state}",
                shepherd_platform::text::visible(&a.tool),
                shepherd_platform::text::visible(&a.task_id)
            )
        })
        .unwrap_or_default()
}

fn event_view(event: am::AgentEvent) -> Value {
    use agent_event::Kind;
    let (kind, detail) = match event.kind {
        Some(Kind::Created(e)) => ("created", e.name),
        Some(Kind::Started(e)) => ("started", format!("pid {}", e.pid)),
        Some(Kind::Ready(_)) => ("ready", String::new()),
        Some(Kind::Disconnected(e)) => ("disconnected", e.reason),
        Some(Kind::Exited(e)) => {
            let reason = short(e.reason().as_str_name(), "EXIT_REASON_");
            let how = match (e.code, e.signal) {
                (Some(code), _) => format!("code {code}"),
                (None, Some(signal)) => format!("signal {signal}"),
                _ => "status unknown".into(),
            };
            ("exited", format!("{reason}, {how}"))
        }
        Some(Kind::Restarted(e)) => ("restarted", e.reason),
        Some(Kind::Stopped(_)) => ("stopped", String::new()),
        Some(Kind::Deleted(_)) => ("deleted", String::new()),
        Some(Kind::TaskAccepted(e)) => ("task_accepted", e.task_id),
        Some(Kind::TaskCompleted(e)) => ("task_completed", e.task_id),
        Some(Kind::TaskLost(e)) => ("task_lost", format!("{}: {}", e.task_id, e.reason)),
        Some(Kind::TaskProgress(e)) => ("task_progress", e.task_id),
        Some(Kind::ApprovalRequested(e)) => ("approval_requested", approval_line(e.approval)),
        Some(Kind::ApprovalDecided(e)) => ("approval_decided", approval_line(e.approval)),
        Some(Kind::TaskUsage(e)) => (
            "task_usage",
            format!(
                "{}: {} in, {} out, cost {}",
                e.task_id, e.input_tokens, e.output_tokens, e.cost
            ),
        ),
        Some(Kind::BudgetExhausted(e)) => ("budget_exhausted", e.summary),
        None => ("unknown", String::new()),
    };
    json!({
        "sequence": event.sequence,
        "agent_id": event.agent_id,
        "generation": event.generation,
        "time": time(event.time),
        "kind": kind,
        "detail": detail,
    })
}

fn budget_view(budget: sched::Budget) -> Value {
    let usage = budget.usage.unwrap_or_default();
    let subject = if budget.workflow_id.is_empty() {
        format!("agent {}", budget.agent_id)
    } else {
        format!("workflow {}", budget.workflow_id)
    };
    json!({
        "subject": subject,
        "per": shepherd_proto::budget_text::period(&budget),
        "used": shepherd_proto::budget_text::used(&budget),
        "tokens": format!("{} in, {} out", usage.input_tokens, usage.output_tokens),
        "resets": time(budget.resets_at),
        "spent": budget.exhausted,
    })
}

fn workflow_view(workflow: sched::Workflow, runner: Option<&sched::Runner>) -> Value {
    json!({
        "id": workflow.id,
        "name": workflow.name,
        "agent_id": workflow.agent_id,
        "enabled": workflow.enabled,
        "disabled_reason": workflow.disabled_reason,
        "runner_state": runner.map(|r| short(r.state().as_str_name(), "RUNNER_STATE_")),
        "runner_reason": runner.map(|r| r.reason.clone()),
        "runner_since": runner.map(|r| time(r.since)),
    })
}

fn task_view(task: sched::Task) -> Value {
    let state = short(task.state().as_str_name(), "TASK_STATE_");
    let fields = task.fields.unwrap_or_default();
    json!({
        "id": task.id,
        "workflow_id": task.workflow_id,
        "state": state,
        "title": fields.title,
        "prompt": task.prompt,
        "output": task.output,
        "last_error": task.last_error,
        "dead_letter": task.dead_letter,
        "created": time(task.create_time),
        "updated": time(task.update_time),
        "progress": task.progress.map(|p| json!({
            "message": p.message,
            "fraction": p.fraction,
            "output": p.output,
        })),
        "attempts": task.history.into_iter().map(|a| json!({
            "attempt": a.attempt,
            "outcome": a.outcome,
            "error": a.error,
            "start": time(a.start_time),
            "end": time(a.end_time),
        })).collect::<Vec<_>>(),
    })
}

fn task_event_view(event: sched::TaskEvent) -> Value {
    json!({
        "task_id": event.task_id,
        "workflow_id": event.workflow_id,
        "state": short(event.state().as_str_name(), "TASK_STATE_"),
        "attempt": event.attempt,
        "time": time(event.time),
        "progress": event.progress.map(|p| json!({
            "message": p.message,
            "fraction": p.fraction,
            "output": p.output,
        })),
    })
}
