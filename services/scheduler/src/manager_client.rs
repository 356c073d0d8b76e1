//! The scheduler's client of the agent-manager: the only way it learns
//! about agents (it never reads the manager's tables).

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use prost::Message;
use shepherd_platform::auth::ClientMetadata;
use shepherd_platform::batch::{BatchError, BatchLimits, Batcher};
use shepherd_proto::agentmanager::v1::{self as pb, agent_manager_client::AgentManagerClient};
use shepherd_proto::event_kinds::KIND_NAMES;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::model::{TaskEnd, TaskFields, ToolPolicy};

/// Deadline of unary calls: a hung manager must not wedge a runner.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most task ids per `BatchGetTaskStates` call (the manager's limit).
pub(crate) const MAX_TASK_STATES: usize = 1000;
/// Most tasks per `DispatchTasks` call (the manager's limit).
const MAX_DISPATCH_BATCH: usize = 256;
/// Most encoded bytes of tasks per `DispatchTasks` call, well under the
/// manager's message limit (4 MiB by default); a bigger task goes alone.
const MAX_DISPATCH_BYTES: usize = 1024 * 1024;

/// Where a task stands at the agent-manager (its answer to a dispatch or a
/// state query), in the scheduler's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RemoteTask {
    /// The manager never delivered it.
    Unknown,
    /// Delivered to the agent's live session (perhaps by this very call)
    /// and not finished.
    InFlight { attempt: u32 },
    /// Finished with this outcome.
    Completed {
        attempt: u32,
        outcome: TaskEnd,
        output: String,
    },
    /// The attempt was lost (its session ended before it finished).
    Lost { attempt: u32 },
}

/// An attempt of a task, as the agent will receive it.
#[derive(Debug, Clone)]
pub(crate) struct OutgoingTask {
    pub agent: Uuid,
    pub task_id: String,
    pub attempt: u32,
    pub workflow_id: Uuid,
    pub workflow_name: String,
    /// The rendered template (text).
    pub prompt: String,
    /// The template rendered for /bin/sh (fields through the environment).
    pub script: String,
    pub fields: TaskFields,
    /// How long the attempt may run.
    pub timeout: Duration,
    pub tool_policy: ToolPolicy,
}

/// Why a call to the agent-manager failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ManagerError {
    /// The agent cannot take tasks now (not ready, or unknown).
    #[error("{0}")]
    Refused(String),
    /// The manager could not be reached or could not answer; retry later.
    #[error("agent-manager unreachable: {0}")]
    Unavailable(String),
}

impl ManagerError {
    /// What the manager (or the transport) said.
    pub(crate) fn message(&self) -> &str {
        match self {
            Self::Refused(message) | Self::Unavailable(message) => message,
        }
    }
}

impl From<tonic::Status> for ManagerError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::FailedPrecondition
            | tonic::Code::NotFound
            | tonic::Code::InvalidArgument => Self::Refused(status.message().to_owned()),
            _ => Self::Unavailable(status.message().to_owned()),
        }
    }
}

/// How a task ended, from the manager's outcome.
pub(crate) fn task_end(outcome: pb::TaskOutcome) -> TaskEnd {
    match outcome {
        pb::TaskOutcome::Succeeded => TaskEnd::Succeeded,
        pb::TaskOutcome::TimedOut => TaskEnd::TimedOut,
        pb::TaskOutcome::Cancelled => TaskEnd::Cancelled,
        pb::TaskOutcome::Failed | pb::TaskOutcome::Unspecified => TaskEnd::Failed,
    }
}

fn remote_task(
    state: pb::TaskState,
    attempt: u32,
    outcome: pb::TaskOutcome,
    output: String,
) -> RemoteTask {
    match state {
        pb::TaskState::Delivered | pb::TaskState::Accepted => RemoteTask::InFlight { attempt },
        pb::TaskState::Completed => RemoteTask::Completed {
            attempt,
            outcome: task_end(outcome),
            output,
        },
        pb::TaskState::Lost => RemoteTask::Lost { attempt },
        pb::TaskState::Unknown | pb::TaskState::Unspecified => RemoteTask::Unknown,
    }
}

type Client = AgentManagerClient<InterceptedService<Channel, ClientMetadata>>;

/// Sends the dispatches waiting together as `DispatchTasks` calls (split
/// by size), several calls at once so that a slow one holds up few.
fn dispatch_batcher(client: Client) -> Dispatches {
    let limits = BatchLimits {
        max_items: MAX_DISPATCH_BATCH,
        max_in_flight: 4,
        ..BatchLimits::default()
    };
    Batcher::spawn(limits, move |tasks| {
        let client = client.clone();
        async move {
            let calls = chunks_by_size(tasks, MAX_DISPATCH_BYTES)
                .into_iter()
                .map(|chunk| dispatch_chunk(client.clone(), chunk));
            let answers = futures_util::future::join_all(calls).await;
            Ok(answers.into_iter().flatten().collect())
        }
    })
}

/// One `DispatchTasks` call: one answer per task, in order (all the same
/// error when the call itself failed).
async fn dispatch_chunk(
    mut client: Client,
    tasks: Vec<pb::DispatchTaskRequest>,
) -> Vec<Result<RemoteTask, ManagerError>> {
    let count = tasks.len();
    let request = ManagerClient::request(pb::DispatchTasksRequest { tasks });
    let results = match client.dispatch_tasks(request).await {
        Ok(response) => response.into_inner().results,
        Err(status) => return vec![Err(ManagerError::from(status)); count],
    };
    if results.len() != count {
        let wrong = ManagerError::Unavailable(format!(
            "dispatched {count} tasks, got {} answers",
            results.len()
        ));
        return vec![Err(wrong); count];
    }
    results.into_iter().map(dispatch_answer).collect()
}

fn dispatch_answer(result: pb::DispatchTaskResult) -> Result<RemoteTask, ManagerError> {
    match result.result {
        Some(pb::dispatch_task_result::Result::Dispatched(response)) => {
            let (state, outcome) = (response.state(), response.outcome());
            Ok(remote_task(
                state,
                response.attempt,
                outcome,
                response.output,
            ))
        }
        Some(pb::dispatch_task_result::Result::Error(error)) => Err(ManagerError::from(
            tonic::Status::new(tonic::Code::from(error.code), error.message),
        )),
        None => Err(ManagerError::Unavailable(
            "the agent-manager answered a dispatch with nothing".into(),
        )),
    }
}

/// Splits `tasks`, in order, into runs of at most `max_bytes` encoded (a
/// bigger task makes a run of its own).
fn chunks_by_size(
    tasks: Vec<pb::DispatchTaskRequest>,
    max_bytes: usize,
) -> Vec<Vec<pb::DispatchTaskRequest>> {
    let mut chunks: Vec<Vec<pb::DispatchTaskRequest>> = Vec::new();
    let mut bytes = 0;
    for task in tasks {
        let size = task.encoded_len();
        match chunks.last_mut() {
            Some(chunk) if bytes + size <= max_bytes => chunk.push(task),
            _ => {
                chunks.push(vec![task]);
                bytes = 0;
            }
        }
        bytes += size;
    }
    chunks
}

/// Dispatches wait here to be sent together.
type Dispatches = Batcher<pb::DispatchTaskRequest, Result<RemoteTask, ManagerError>, Infallible>;

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
        let channel = shepherd_platform::tls::endpoint(url, ca_file)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        let auth = ClientMetadata::new(token)?;
        let client = AgentManagerClient::with_interceptor(channel, auth);
        Ok(Self {
            dispatches: dispatch_batcher(client.clone()),
            client,
        })
    }

    fn request<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(CALL_TIMEOUT);
        request
    }

    /// Delivers an attempt of a task (idempotent: a repeat delivers
    /// nothing and reports the task as it stands).
    ///
    /// The tasks being dispatched at the same moment (a claim batch's, all
    /// the runners' woken by one notification) go in one `DispatchTasks`
    /// call: one request instead of one per task, for both services.
    pub(crate) async fn dispatch(&self, task: OutgoingTask) -> Result<RemoteTask, ManagerError> {
        let fields = task.fields;
        let spec = pb::TaskSpec {
            prompt: task.prompt.clone(),
            shell_script: task.script,
            title: fields.title,
            body: fields.body,
            url: fields.url,
            labels: fields.labels,
            metadata: fields.metadata.into_iter().collect(),
            workflow_id: task.workflow_id.to_string(),
            workflow_name: task.workflow_name,
            allowed_tools: task.tool_policy.allowed,
            denied_tools: task.tool_policy.denied,
            ask_tools: task.tool_policy.ask,
        };
        let request = pb::DispatchTaskRequest {
            agent_id: task.agent.to_string(),
            task_id: task.task_id,
            // For agents that read only bytes: the prompt, as text.
            payload: task.prompt.into_bytes(),
            // Sent in a call of its own batch, so the task's trace goes
            // explicitly: the caller's span (the runner's dispatch).
            trace_context: shepherd_platform::telemetry::propagation::current_map(),
            attempt: task.attempt,
            spec: Some(spec),
            timeout: prost_types::Duration::try_from(task.timeout).ok(),
        };
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
        let request = Self::request(pb::BatchGetTaskStatesRequest { task_ids });
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
        let request = Self::request(pb::CancelTaskRequest {
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
        let request = Self::request(pb::GetAgentRequest {
            agent_id: agent.to_string(),
        });
        match self.client.clone().get_agent(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(status.into()),
        }
    }

    /// The agent as the manager reports it, for a diagnosis.
    pub(crate) async fn agent_facts(
        &self,
        agent: Uuid,
    ) -> Result<crate::explain::AgentFacts, ManagerError> {
        let request = Self::request(pb::GetAgentRequest {
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
        let request = Self::request(pb::ListApprovalsRequest {
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
            let request = Self::request(pb::ListAgentsRequest {
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

/// What the scheduler hears on the manager's event stream, in its own
/// terms: the wire types are decoded once, here.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Heard {
    Event {
        sequence: u64,
        agent: Option<Uuid>,
        event: AgentEvent,
    },
    Heartbeat {
        latest: u64,
    },
    /// Events up to `pruned_through` are gone for good: resynchronise.
    Resync {
        requested_after: u64,
        pruned_through: u64,
    },
    /// An empty message.
    Nothing,
}

/// An agent event, as far as the scheduler cares.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AgentEvent {
    Ready,
    Restarted {
        generation: u64,
        reason: String,
    },
    /// Started, disconnected, exited or stopped: not ready.
    NotReady,
    Deleted,
    TaskCompleted {
        task_id: String,
        /// None: the manager numbered no attempt.
        attempt: Option<u32>,
        end: TaskEnd,
        output: String,
    },
    TaskLost {
        task_id: String,
        attempt: Option<u32>,
        reason: String,
    },
    TaskProgress {
        task_id: String,
        attempt: u32,
        message: String,
        /// 0 to 1; negative: unknown.
        fraction: f32,
        output: String,
    },
    /// Created or accepted: nothing for the scheduler to do.
    Other,
}

/// "deploy: approved by alice (ship it)".
fn approval_outcome(approval: &pb::Approval) -> String {
    let state = shepherd_proto::short_name(approval.state().as_str_name(), "APPROVAL_STATE_");
    let by = if approval.decided_by.is_empty() {
        String::new()
    } else {
        format!(" by {}", approval.decided_by)
    };
    let comment = if approval.comment.is_empty() {
        String::new()
    } else {
        format!(" ({})", approval.comment)
    };
    format!("{}: {state}{by}{comment}", approval.tool)
}

/// The agent event stream.
pub(crate) struct EventStream(tonic::Streaming<pb::WatchAgentEventsResponse>);

impl EventStream {
    /// The next message; None when the stream ended, Err when it broke.
    pub(crate) async fn next(&mut self) -> Result<Option<Heard>, String> {
        match self.0.message().await {
            Ok(message) => Ok(message.map(Heard::from)),
            Err(status) => Err(status.message().to_owned()),
        }
    }
}

impl From<pb::WatchAgentEventsResponse> for Heard {
    fn from(message: pb::WatchAgentEventsResponse) -> Self {
        use pb::watch_agent_events_response::Kind as Message;
        match message.kind {
            Some(Message::Event(event)) => Self::Event {
                sequence: event.sequence,
                agent: Uuid::parse_str(&event.agent_id).ok(),
                event: AgentEvent::from(event.kind),
            },
            Some(Message::Heartbeat(beat)) => Self::Heartbeat {
                latest: beat.latest_sequence,
            },
            Some(Message::ResyncRequired(resync)) => Self::Resync {
                requested_after: resync.requested_after_sequence,
                pruned_through: resync.pruned_through_sequence,
            },
            None => Self::Nothing,
        }
    }
}

/// The event kinds the scheduler has no use for (`AgentEvent::from` maps
/// them to `Other`); it watches every other kind, so a new kind reaches it
/// unless it is named here.
const IGNORED_KINDS: [&str; 2] = ["created", "task_accepted"];

impl From<Option<pb::agent_event::Kind>> for AgentEvent {
    fn from(kind: Option<pb::agent_event::Kind>) -> Self {
        use pb::agent_event::Kind;
        let attempt = |n: u32| (n > 0).then_some(n);
        match kind {
            Some(Kind::Ready(_)) => Self::Ready,
            Some(Kind::Restarted(restarted)) => Self::Restarted {
                generation: restarted.generation,
                reason: restarted.reason,
            },
            Some(Kind::Started(_) | Kind::Disconnected(_) | Kind::Exited(_) | Kind::Stopped(_)) => {
                Self::NotReady
            }
            Some(Kind::Deleted(_)) => Self::Deleted,
            Some(Kind::TaskCompleted(done)) => Self::TaskCompleted {
                end: task_end(done.outcome()),
                attempt: attempt(done.attempt),
                task_id: done.task_id,
                output: done.output,
            },
            Some(Kind::TaskLost(lost)) => Self::TaskLost {
                attempt: attempt(lost.attempt),
                task_id: lost.task_id,
                reason: lost.reason,
            },
            Some(Kind::TaskProgress(progress)) => Self::TaskProgress {
                task_id: progress.task_id,
                attempt: progress.attempt,
                message: progress.message,
                fraction: progress.fraction,
                output: progress.output,
            },
            // An approval shows on its task as progress: what it waits
            // for, then how that was decided.
            Some(Kind::ApprovalRequested(pb::ApprovalRequested {
                approval: Some(approval),
            })) => Self::TaskProgress {
                message: format!(
                    "waiting for approval to use {} (approval {})",
                    approval.tool, approval.id
                ),
                task_id: approval.task_id,
                attempt: approval.attempt,
                fraction: -1.0,
                output: String::new(),
            },
            Some(Kind::ApprovalDecided(pb::ApprovalDecided {
                approval: Some(approval),
            })) => Self::TaskProgress {
                message: approval_outcome(&approval),
                task_id: approval.task_id,
                attempt: approval.attempt,
                fraction: -1.0,
                output: String::new(),
            },
            Some(
                Kind::Created(_)
                | Kind::TaskAccepted(_)
                | Kind::ApprovalRequested(_)
                | Kind::ApprovalDecided(_),
            )
            | None => Self::Other,
        }
    }
}

#[cfg(test)]
mod decoding {
    use super::*;

    fn event(agent: &str, kind: pb::agent_event::Kind) -> pb::WatchAgentEventsResponse {
        pb::WatchAgentEventsResponse {
            kind: Some(pb::watch_agent_events_response::Kind::Event(
                pb::AgentEvent {
                    sequence: 7,
                    agent_id: agent.to_owned(),
                    kind: Some(kind),
                    ..Default::default()
                },
            )),
        }
    }

    #[test]
    fn the_wire_is_read_into_the_schedulers_terms() {
        let agent = Uuid::now_v7();
        let done = Heard::from(event(
            &agent.to_string(),
            pb::agent_event::Kind::TaskCompleted(pb::TaskCompleted {
                task_id: "w:k".into(),
                outcome: pb::TaskOutcome::TimedOut as i32,
                output: "out".into(),
                attempt: 0,
            }),
        ));
        assert_eq!(
            done,
            Heard::Event {
                sequence: 7,
                agent: Some(agent),
                event: AgentEvent::TaskCompleted {
                    task_id: "w:k".into(),
                    attempt: None,
                    end: TaskEnd::TimedOut,
                    output: "out".into(),
                },
            }
        );
        let exited = Heard::from(event(
            "not-a-uuid",
            pb::agent_event::Kind::Exited(pb::AgentExited::default()),
        ));
        assert_eq!(
            exited,
            Heard::Event {
                sequence: 7,
                agent: None,
                event: AgentEvent::NotReady,
            }
        );
        assert_eq!(
            Heard::from(pb::WatchAgentEventsResponse { kind: None }),
            Heard::Nothing
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, payload_bytes: usize) -> pb::DispatchTaskRequest {
        pb::DispatchTaskRequest {
            task_id: id.into(),
            payload: vec![b'x'; payload_bytes],
            ..Default::default()
        }
    }

    /// Tasks keep their order; a call holds what fits, and a task bigger
    /// than a call's budget goes alone.
    #[test]
    fn dispatch_calls_are_split_by_size_in_order() {
        let tasks = vec![
            task("a", 400),
            task("b", 400),
            task("c", 400),
            task("big", 5000),
            task("d", 10),
        ];
        let chunks = chunks_by_size(tasks, 1000);
        let ids: Vec<Vec<&str>> = chunks
            .iter()
            .map(|chunk| chunk.iter().map(|t| t.task_id.as_str()).collect())
            .collect();
        assert_eq!(ids, vec![vec!["a", "b"], vec!["c"], vec!["big"], vec!["d"]]);
        assert!(chunks_by_size(Vec::new(), 1000).is_empty());
    }

    /// An error answered for one task is the error DispatchTask would have
    /// returned: refusals stay refusals, the rest is "unavailable".
    #[test]
    fn a_batch_error_maps_like_a_call_error() {
        let error = |code: tonic::Code| pb::DispatchTaskResult {
            result: Some(pb::dispatch_task_result::Result::Error(
                pb::DispatchTaskError {
                    code: code as i32,
                    message: "why".into(),
                },
            )),
        };
        assert!(matches!(
            dispatch_answer(error(tonic::Code::FailedPrecondition)),
            Err(ManagerError::Refused(message)) if message == "why"
        ));
        assert!(matches!(
            dispatch_answer(error(tonic::Code::Unavailable)),
            Err(ManagerError::Unavailable(_))
        ));
        assert!(matches!(
            dispatch_answer(pb::DispatchTaskResult { result: None }),
            Err(ManagerError::Unavailable(_))
        ));
    }
}
