//! The scheduler's client of the agent-manager: the only way it learns
//! about agents (it never reads the manager's tables). `connection` holds
//! the channel, `dispatch` batches dispatches, `decode` reads the wire into
//! the scheduler's types; nothing outside this folder sees the manager's
//! protobuf types.

use std::collections::HashSet;

use shepherd_platform::batch::BatchError;
use shepherd_proto::agentmanager::v1 as pb;
use shepherd_proto::event_kinds::KIND_NAMES;
use uuid::Uuid;

mod connection;
mod decode;
mod dispatch;
mod error;

use connection::{Client, request};
use decode::{IGNORED_KINDS, remote_task};
use dispatch::{Dispatches, dispatch_batcher};

pub(crate) use decode::{AgentEvent, EventStream, Heard, RemoteTask};
pub(crate) use dispatch::OutgoingTask;
pub(crate) use error::ManagerError;

/// Most task ids per `BatchGetTaskStates` call (the manager's limit).
pub(crate) const MAX_TASK_STATES: usize = 1000;

#[derive(Clone)]
pub(crate) struct ManagerClient {
    client: Client,
    dispatches: Dispatches,
}

impl ManagerClient {
    /// Connects lazily: the scheduler starts (and serves its API) while the
    /// manager is still down.
    pub(crate) fn new(
        url: &str,
        token: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let client = connection::connect(url, token, ca_file)?;
        Ok(Self {
            dispatches: dispatch_batcher(client.clone()),
            client,
        })
    }

    /// Delivers an attempt of a task (idempotent: a repeat delivers
    /// nothing and reports the task as it stands).
    ///
    /// The tasks being dispatched at the same moment (a claim batch's, all
    /// the runners' woken by one notification) go in one `DispatchTasks`
    /// call: one request instead of one per task, for both services.
    pub(crate) async fn dispatch(&self, task: OutgoingTask) -> Result<RemoteTask, ManagerError> {
        let request = pb::DispatchTaskRequest::from(task);
        match self.dispatches.submit(request).await {
            Ok(answer) => answer,
            Err(BatchError::Stopped) => Err(ManagerError::Unavailable(
                "the scheduler is shutting down".into(),
            )),
            Err(BatchError::Failed(never)) => match never {},
        }
    }

    /// Where each task stands, in the order asked (at most
    /// `MAX_TASK_STATES` ids).
    pub(crate) async fn task_states(
        &self,
        task_ids: Vec<String>,
    ) -> Result<Vec<RemoteTask>, ManagerError> {
        let asked = task_ids.len();
        let request = request(pb::BatchGetTaskStatesRequest { task_ids });
        let response = self
            .client
            .clone()
            .batch_get_task_states(request)
            .await?
            .into_inner();
        if response.tasks.len() != asked {
            return Err(ManagerError::Unavailable(format!(
                "asked about {asked} tasks, got {} answers",
                response.tasks.len()
            )));
        }
        Ok(response
            .tasks
            .into_iter()
            .map(|task| remote_task(task.state(), task.attempt, task.outcome(), task.output))
            .collect())
    }

    /// Asks the agent running a task to stop it. Returns where the task
    /// stands at the manager (in flight: the cancellation is on its way).
    pub(crate) async fn cancel_task(
        &self,
        agent: Uuid,
        task_id: &str,
    ) -> Result<RemoteTask, ManagerError> {
        let request = request(pb::CancelTaskRequest {
            agent_id: agent.to_string(),
            task_id: task_id.to_owned(),
        });
        let response = self.client.clone().cancel_task(request).await?.into_inner();
        Ok(remote_task(
            response.state(),
            0,
            pb::TaskOutcome::Unspecified,
            String::new(),
        ))
    }

    /// Whether the agent exists (NOT_FOUND: false; other failures: error).
    pub(crate) async fn agent_exists(&self, agent: Uuid) -> Result<bool, ManagerError> {
        let request = request(pb::GetAgentRequest {
            agent_id: agent.to_string(),
        });
        match self.client.clone().get_agent(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(status.into()),
        }
    }

    /// Reports a spent budget (idempotent by `key`: see the RPC).
    pub(crate) async fn report_budget_exhausted(
        &self,
        agent: Uuid,
        workflow_id: String,
        key: &str,
        summary: String,
        grace: std::time::Duration,
    ) -> Result<(), ManagerError> {
        let request = request(pb::ReportBudgetExhaustedRequest {
            agent_id: agent.to_string(),
            workflow_id,
            key: key.to_owned(),
            summary,
            grace: prost_types::Duration::try_from(grace).ok(),
        });
        self.client
            .clone()
            .report_budget_exhausted(request)
            .await
            .map(drop)
            .map_err(Into::into)
    }

    /// The agent as the manager reports it, for a diagnosis.
    pub(crate) async fn agent_facts(
        &self,
        agent: Uuid,
    ) -> Result<crate::explain::AgentFacts, ManagerError> {
        let request = request(pb::GetAgentRequest {
            agent_id: agent.to_string(),
        });
        let agent = self.client.clone().get_agent(request).await?.into_inner();
        let status = agent.status();
        let desired_running = agent.desired_state() != pb::DesiredState::Stopped;
        Ok(crate::explain::AgentFacts {
            status: shepherd_proto::short_name(status.as_str_name(), "AGENT_STATUS_"),
            message: agent.status_message,
            desired_running,
            generation: agent.generation,
            since: agent
                .update_time
                .and_then(|time| std::time::SystemTime::try_from(time).ok()),
        })
    }

    /// The workflow's pending approvals, the oldest first (at most 100).
    pub(crate) async fn pending_approvals(
        &self,
        workflow: Uuid,
    ) -> Result<Vec<crate::explain::ApprovalFacts>, ManagerError> {
        let request = request(pb::ListApprovalsRequest {
            state: pb::ApprovalState::Pending as i32,
            workflow_id: workflow.to_string(),
            page_size: 100,
            ..Default::default()
        });
        let page = self
            .client
            .clone()
            .list_approvals(request)
            .await?
            .into_inner();
        let now = std::time::SystemTime::now();
        // Listed newest first.
        Ok(page
            .approvals
            .into_iter()
            .rev()
            .map(|approval| crate::explain::ApprovalFacts {
                age: approval
                    .create_time
                    .and_then(|at| std::time::SystemTime::try_from(at).ok())
                    .and_then(|at| now.duration_since(at).ok())
                    .unwrap_or_default(),
                approval_id: approval.id,
                task_id: approval.task_id,
                tool: approval.tool,
            })
            .collect())
    }

    /// Every agent that is READY right now.
    pub(crate) async fn ready_agents(&self) -> Result<HashSet<Uuid>, ManagerError> {
        let mut ready = HashSet::new();
        let mut page_token = String::new();
        loop {
            let request = request(pb::ListAgentsRequest {
                page_size: 1000,
                page_token,
                status: pb::AgentStatus::Ready as i32,
                labels: Default::default(),
            });
            let page = self.client.clone().list_agents(request).await?.into_inner();
            ready.extend(
                page.agents
                    .iter()
                    .filter_map(|a| Uuid::parse_str(&a.id).ok()),
            );
            if page.next_page_token.is_empty() {
                return Ok(ready);
            }
            page_token = page.next_page_token;
        }
    }

    /// The agent event stream after `after`, decoded into the scheduler's
    /// own terms: only the kinds it acts on (`AgentEvent::from`), so that
    /// a task's acceptance, one event per task, is not sent only to be
    /// dropped here.
    pub(crate) async fn watch(&self, after: u64) -> Result<EventStream, ManagerError> {
        let request = tonic::Request::new(pb::WatchAgentEventsRequest {
            after_sequence: after,
            agent_id: String::new(),
            kinds: KIND_NAMES
                .iter()
                .filter(|kind| !IGNORED_KINDS.contains(kind))
                .map(|kind| (*kind).to_owned())
                .collect(),
        });
        Ok(EventStream(
            self.client
                .clone()
                .watch_agent_events(request)
                .await?
                .into_inner(),
        ))
    }
}
