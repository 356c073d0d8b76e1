//! gRPC handlers: translation between the wire and the manager, nothing
//! more.

mod connect;
mod convert;
mod forward;
mod roles;
mod session;

pub(crate) use connect::MAX_HELD_TASKS;
pub(crate) use roles::permission;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use shepherd_platform::paging;

use futures_util::{Stream, StreamExt};
use shepherd_proto::agentmanager::v1::{self as pb, agent_manager_server::AgentManager};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use uuid::Uuid;

use crate::containment::LimitKind;
use crate::error::Error;
use crate::events::{EventFilter, KIND_NAMES, wire_approval};
use crate::logs::LogStream;
use crate::manager::{MAX_PAYLOAD_BYTES, MAX_TASK_ID_LEN, Manager, Route, TaskRequest};
use crate::model::approval::ApprovalFilter;
use crate::model::{AgentRecord, parse_agent_id};
use crate::store::AgentFilter;
use forward::{PeerClient, is_forwarded};
use shepherd_platform::server::record_id;

pub(crate) use forward::Peers;
pub(crate) use shepherd_proto::agentmanager::v1::agent_manager_server::AgentManagerServer;
pub(crate) use shepherd_proto::agentmanager::v1::agent_session_server::AgentSessionServer;

/// Most tasks one `DispatchTasks` call may carry.
pub(crate) const MAX_DISPATCH_BATCH: usize = 256;
/// Most tasks one `BatchGetTaskStates` call may ask about.
pub(crate) const MAX_TASK_STATES: usize = 1000;
/// Most log lines one GetAgentLogs returns.
pub(crate) const MAX_LOG_LINES: i32 = 10_000;
/// Page size of ListAgents: default and most.
pub(crate) const DEFAULT_PAGE: i64 = 100;
pub(crate) const MAX_PAGE: i64 = 1000;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone)]
pub(crate) struct Api {
    manager: Arc<Manager>,
    peers: Arc<Peers>,
    /// What GetManagerInfo warns of (an API served open on purpose).
    security_warning: Arc<str>,
    audit: shepherd_platform::audit::AuditLog,
}

impl Api {
    pub(crate) fn new(
        manager: Arc<Manager>,
        peers: Peers,
        security_warning: String,
        audit: shepherd_platform::audit::AuditLog,
    ) -> Self {
        Self {
            manager,
            peers: Arc::new(peers),
            security_warning: security_warning.into(),
            audit,
        }
    }

    /// The node to forward a call about agent `id` to (None: serve it
    /// here). `claim`: a call that changes the agent takes over one no
    /// live node supervises.
    async fn peer_for<T>(
        &self,
        request: &Request<T>,
        id: Uuid,
        claim: bool,
    ) -> Result<Option<PeerClient>, Status> {
        match self.manager.route(id, claim).await? {
            Route::Here => Ok(None),
            Route::Peer { node, .. } if is_forwarded(request) => Err(Status::unavailable(format!(
                "agent {id} moved to manager node {node} while this call was forwarded; retry"
            ))),
            Route::Peer { url, .. } => Ok(Some(self.peers.client(&url)?)),
        }
    }

    /// Serves a call about agent `id` here, or hands it on to the node
    /// that supervises it (`forward`): the one place a call about one agent
    /// is routed. `claim`: as for `peer_for`.
    async fn here_or_peer<T, R, F, S>(
        &self,
        request: Request<T>,
        id: Uuid,
        claim: bool,
        forward: impl FnOnce(PeerClient, Request<T>) -> F,
        serve: impl FnOnce(T) -> S,
    ) -> Result<Response<R>, Status>
    where
        F: Future<Output = Result<Response<R>, Status>>,
        S: Future<Output = Result<R, Status>>,
    {
        match self.peer_for(&request, id, claim).await? {
            Some(peer) => forward(peer, self.peers.forward(request)).await,
            None => serve(request.into_inner()).await.map(Response::new),
        }
    }

    /// Asks the nodes that supervise them about the tasks only they can
    /// judge. A node that cannot be asked leaves its tasks as stored (in
    /// flight): never declared lost on a guess; the caller asks again.
    async fn ask_peers(
        &self,
        states: &mut [crate::manager::TaskStatus],
        elsewhere: Vec<(String, String)>,
    ) {
        let mut by_url: std::collections::HashMap<String, Vec<String>> = Default::default();
        for (task, url) in elsewhere {
            by_url.entry(url).or_default().push(task);
        }
        for (url, task_ids) in by_url {
            let answer = match self.peers.client(&url) {
                Ok(mut peer) => peer
                    .batch_get_task_states(
                        self.peers
                            .outbound(pb::BatchGetTaskStatesRequest { task_ids }),
                    )
                    .await
                    .map(tonic::Response::into_inner),
                Err(status) => Err(status),
            };
            let answer = match answer {
                Ok(answer) => answer,
                Err(status) => {
                    tracing::warn!(%url, error = %status, "could not ask a manager node about its tasks");
                    continue;
                }
            };
            for task in answer.tasks {
                if let Some(status) = states.iter_mut().find(|s| s.task_id == task.task_id) {
                    *status = convert::task_status_from_wire(task);
                }
            }
        }
    }

    /// `DispatchTask` for an agent this node supervises.
    async fn dispatch_here(
        &self,
        agent_id: Uuid,
        request: pb::DispatchTaskRequest,
    ) -> Result<pb::DispatchTaskResponse, Status> {
        let task_id = request.task_id.clone();
        record_id("task_id", &task_id);
        let dispatched = self
            .manager
            .dispatch(TaskRequest {
                agent_id,
                task_id: request.task_id,
                attempt: request.attempt,
                // The workflow an approval of this task belongs to comes
                // from here, never from the agent.
                workflow_id: request
                    .spec
                    .as_ref()
                    .map(|spec| spec.workflow_id.clone())
                    .unwrap_or_default(),
                spec: request.spec.map(session::encode_spec),
                timeout: request
                    .timeout
                    .and_then(shepherd_platform::validate::non_negative_duration)
                    .filter(|timeout| !timeout.is_zero()),
                payload: request.payload,
                // An explicit context wins; else the task continues this
                // call's trace.
                trace_context: if request.trace_context.is_empty() {
                    shepherd_platform::telemetry::propagation::current_map()
                } else {
                    request.trace_context
                },
            })
            .await?;
        Ok(pb::DispatchTaskResponse {
            task_id,
            state: convert::task_state(Some(dispatched.state)) as i32,
            duplicate: dispatched.duplicate,
            attempt: dispatched.attempt,
            outcome: convert::task_outcome(dispatched.outcome) as i32,
            output: dispatched.output,
        })
    }

    /// An agent on the wire, with its tree's usage when it runs.
    fn agent(&self, record: AgentRecord) -> pb::Agent {
        let usage = self.manager.usage(record.id);
        convert::agent(record, usage)
    }
}

#[tonic::async_trait]
impl AgentManager for Api {
    async fn create_agent(
        &self,
        request: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let agent = convert::new_agent(request.into_inner().agent)?;
        let (record, credential) = self.manager.create_agent(agent).await?;
        record_id("agent_id", &record.id);
        let mut agent = self.agent(record);
        agent.credential = credential.unwrap_or_default();
        Ok(Response::new(agent))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = parse_agent_id("agent_id", &request.into_inner().agent_id)?;
        record_id("agent_id", &id);
        Ok(Response::new(self.agent(self.manager.get_agent(id).await?)))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let request = request.into_inner();
        let limit = paging::page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let after = paging::after::<Uuid>(&request.page_token, "ListAgents")?;
        let labels = request.labels.into_iter().collect();
        // Checked as a spec's labels are: bounded, no NUL (PostgreSQL
        // refuses it, and the caller would be told to retry forever).
        crate::model::validate_label_filter(&labels)?;
        let filter = AgentFilter {
            status: convert::status_filter(request.status)?,
            labels,
            after,
        };
        let agents = self.manager.list_agents(&filter, limit).await?;
        let next_page_token = paging::next_token(&agents, limit, |agent| agent.id);
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents
                .into_iter()
                .map(|record| self.agent(record))
                .collect(),
            next_page_token,
        }))
    }

    async fn start_agent(
        &self,
        request: Request<pb::StartAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = agent_id(&request.get_ref().agent_id)?;
        self.here_or_peer(
            request,
            id,
            true,
            |mut peer, request| async move { peer.start_agent(request).await },
            |_| async move { Ok(self.agent(self.manager.start_agent(id).await?)) },
        )
        .await
    }

    async fn stop_agent(
        &self,
        request: Request<pb::StopAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = agent_id(&request.get_ref().agent_id)?;
        self.here_or_peer(
            request,
            id,
            true,
            |mut peer, request| async move { peer.stop_agent(request).await },
            |_| async move { Ok(self.agent(self.manager.stop_agent(id).await?)) },
        )
        .await
    }

    async fn restart_agent(
        &self,
        request: Request<pb::RestartAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = agent_id(&request.get_ref().agent_id)?;
        self.here_or_peer(
            request,
            id,
            true,
            |mut peer, request| async move { peer.restart_agent(request).await },
            |_| async move { Ok(self.agent(self.manager.restart_agent(id).await?)) },
        )
        .await
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<()>, Status> {
        let id = agent_id(&request.get_ref().agent_id)?;
        self.here_or_peer(
            request,
            id,
            true,
            |mut peer, request| async move { peer.delete_agent(request).await },
            |_| async move { Ok(self.manager.delete_agent(id).await?) },
        )
        .await
    }

    async fn get_agent_logs(
        &self,
        request: Request<pb::GetAgentLogsRequest>,
    ) -> Result<Response<pb::GetAgentLogsResponse>, Status> {
        let id = agent_id(&request.get_ref().agent_id)?;
        let stream = match pb::LogStream::try_from(request.get_ref().stream) {
            Ok(pb::LogStream::Unspecified | pb::LogStream::Stdout) => LogStream::Stdout,
            Ok(pb::LogStream::Stderr) => LogStream::Stderr,
            Err(_) => {
                return Err(Error::invalid("stream", "use STDOUT or STDERR").into());
            }
        };
        let lines = match request.get_ref().tail_lines {
            0 => 100,
            n @ 1..=MAX_LOG_LINES => n as usize,
            n => {
                return Err(Error::invalid(
                    "tail_lines",
                    format!(
                        "{n} is out of range; use 1-{MAX_LOG_LINES}, or 0 for the default (100)"
                    ),
                )
                .into());
            }
        };
        self.here_or_peer(
            request,
            id,
            false,
            |mut peer, request| async move { peer.get_agent_logs(request).await },
            |_| async move {
                let lines = self.manager.agent_logs(id, stream, lines).await?;
                Ok(pb::GetAgentLogsResponse { lines })
            },
        )
        .await
    }

    async fn dispatch_task(
        &self,
        request: Request<pb::DispatchTaskRequest>,
    ) -> Result<Response<pb::DispatchTaskResponse>, Status> {
        let agent_id = self::agent_id(&request.get_ref().agent_id)?;
        validate_task_id("task_id", &request.get_ref().task_id)?;
        let payload = request.get_ref().payload.len();
        if payload > MAX_PAYLOAD_BYTES {
            return Err(Error::invalid(
                "payload",
                format!("is {payload} bytes; the limit is {MAX_PAYLOAD_BYTES}"),
            )
            .into());
        }
        self.here_or_peer(
            request,
            agent_id,
            false,
            |mut peer, request| async move { peer.dispatch_task(request).await },
            |request| self.dispatch_here(agent_id, request),
        )
        .await
    }

    /// Each task as its own `DispatchTask` call (forwarded alone if its
    /// agent is elsewhere), all at once; one result per task, in order.
    async fn dispatch_tasks(
        &self,
        request: Request<pb::DispatchTasksRequest>,
    ) -> Result<Response<pb::DispatchTasksResponse>, Status> {
        let count = request.get_ref().tasks.len();
        if count == 0 || count > MAX_DISPATCH_BATCH {
            return Err(Error::invalid(
                "tasks",
                format!("must hold 1-{MAX_DISPATCH_BATCH} tasks (it holds {count})"),
            )
            .into());
        }
        let (metadata, _, batch) = request.into_parts();
        let dispatches = batch.tasks.into_iter().map(|mut task| {
            // Each task's span continues the trace its sender gave it, and
            // the task carries this span on to the agent.
            let span = tracing::info_span!(
                "dispatch_task",
                agent_id = tracing::field::Empty,
                task_id = tracing::field::Empty,
            );
            shepherd_platform::telemetry::propagation::adopt_from_map(&span, &task.trace_context);
            task.trace_context.clear();
            let one = Request::from_parts(metadata.clone(), Default::default(), task);
            async move {
                let result = match self.dispatch_task(one).await {
                    Ok(response) => {
                        pb::dispatch_task_result::Result::Dispatched(response.into_inner())
                    }
                    Err(status) => pb::dispatch_task_result::Result::Error(pb::DispatchTaskError {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                    }),
                };
                pb::DispatchTaskResult {
                    result: Some(result),
                }
            }
            .instrument(span)
        });
        let results = futures_util::future::join_all(dispatches).await;
        Ok(Response::new(pb::DispatchTasksResponse { results }))
    }

    async fn batch_get_task_states(
        &self,
        request: Request<pb::BatchGetTaskStatesRequest>,
    ) -> Result<Response<pb::BatchGetTaskStatesResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let task_ids = request.into_inner().task_ids;
        if task_ids.is_empty() || task_ids.len() > MAX_TASK_STATES {
            return Err(Error::invalid(
                "task_ids",
                format!(
                    "must name 1-{MAX_TASK_STATES} tasks (it names {})",
                    task_ids.len()
                ),
            )
            .into());
        }
        for (index, id) in task_ids.iter().enumerate() {
            validate_task_id(&format!("task_ids[{index}]"), id)?;
        }
        let mut states = self.manager.task_states(&task_ids).await?;
        if !forwarded {
            self.ask_peers(&mut states.states, states.elsewhere).await;
        }
        Ok(Response::new(pb::BatchGetTaskStatesResponse {
            tasks: states
                .states
                .into_iter()
                .map(|status| pb::TaskStatus {
                    task_id: status.task_id,
                    state: convert::task_state(status.state) as i32,
                    attempt: status.attempt,
                    outcome: convert::task_outcome(status.outcome) as i32,
                    output: status.output,
                })
                .collect(),
        }))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let agent_id = parse_agent_id("agent_id", &request.get_ref().agent_id)?;
        validate_task_id("task_id", &request.get_ref().task_id)?;
        record_id("task_id", &request.get_ref().task_id);
        self.here_or_peer(
            request,
            agent_id,
            false,
            |mut peer, request| async move { peer.cancel_task(request).await },
            |request| async move {
                let state = self.manager.cancel_task(agent_id, &request.task_id).await?;
                Ok(pb::CancelTaskResponse {
                    state: convert::task_state(state) as i32,
                })
            },
        )
        .await
    }

    type WatchAgentEventsStream = ResponseStream<pb::WatchAgentEventsResponse>;

    async fn watch_agent_events(
        &self,
        request: Request<pb::WatchAgentEventsRequest>,
    ) -> Result<Response<Self::WatchAgentEventsStream>, Status> {
        let request = request.into_inner();
        let agent = match request.agent_id.as_str() {
            "" => None,
            id => Some(parse_agent_id("agent_id", id)?),
        };
        let latest = self.manager.latest_sequence();
        if request.after_sequence > latest {
            // A cursor from the future would silently wait for events that
            // are not coming: say so.
            return Err(Status::out_of_range(format!(
                "after_sequence is past the end of the event log (the latest sequence is {latest}); resume from at most {latest}"
            )));
        }
        let filter = EventFilter {
            agent,
            kinds: event_kinds(&request.kinds)?,
        };
        let events = self.manager.watch_events(request.after_sequence, filter);
        Ok(Response::new(Box::pin(ReceiverStream::new(events).map(Ok))))
    }

    async fn prune_events(
        &self,
        request: Request<pb::PruneEventsRequest>,
    ) -> Result<Response<pb::PruneEventsResponse>, Status> {
        let through = request.into_inner().through_sequence;
        let (pruned_through, deleted) = self.manager.prune_events(through).await?;
        Ok(Response::new(pb::PruneEventsResponse {
            pruned_through_sequence: pruned_through,
            deleted,
        }))
    }

    async fn rotate_agent_credential(
        &self,
        request: Request<pb::RotateAgentCredentialRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = parse_agent_id("agent_id", &request.into_inner().agent_id)?;
        record_id("agent_id", &id);
        let (record, credential) = self.manager.rotate_credential(id).await?;
        let mut agent = self.agent(record);
        agent.credential = credential;
        Ok(Response::new(agent))
    }

    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let request = request.into_inner();
        let limit = paging::page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let filter = ApprovalFilter {
            state: convert::approval_state_filter(request.state)?,
            agent_id: (!request.agent_id.is_empty())
                .then(|| parse_agent_id("agent_id", &request.agent_id))
                .transpose()?,
            workflow_id: {
                shepherd_platform::validate::text("workflow_id", &request.workflow_id, 100)?;
                (!request.workflow_id.is_empty()).then_some(request.workflow_id)
            },
            before: paging::after::<Uuid>(&request.page_token, "ListApprovals")?,
        };
        let approvals = self.manager.approvals().list(&filter, limit).await?;
        let next_page_token = paging::next_token(&approvals, limit, |approval| approval.id);
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals: approvals.iter().map(wire_approval).collect(),
            next_page_token,
        }))
    }

    async fn get_approval(
        &self,
        request: Request<pb::GetApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        let id = shepherd_platform::validate::id(
            "approval_id",
            &request.into_inner().approval_id,
            "approval",
        )?;
        record_id("approval_id", &id);
        let approval = self.manager.approvals().get(id).await?;
        Ok(Response::new(wire_approval(&approval)))
    }

    async fn decide_approval(
        &self,
        request: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        // Recorded from the credentials, never from the request's fields.
        let decider = crate::model::approval::Decider {
            name: shepherd_platform::auth::caller(&request),
            agent: shepherd_platform::auth::identity(&request)
                .and_then(|caller| caller.agent.clone()),
        };
        let request = request.into_inner();
        let id = shepherd_platform::validate::id("approval_id", &request.approval_id, "approval")?;
        record_id("approval_id", &id);
        let decision = convert::decision(request.decision)?;
        let approval = self
            .manager
            .approvals()
            .decide(id, decision, &request.comment, &decider)
            .await?;
        Ok(Response::new(wire_approval(&approval)))
    }

    async fn report_budget_exhausted(
        &self,
        request: Request<pb::ReportBudgetExhaustedRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        let request = request.into_inner();
        let agent = shepherd_platform::validate::id("agent_id", &request.agent_id, "agent")?;
        record_id("agent_id", &agent);
        let grace = convert::budget_grace(request.grace)?;
        let approval = self
            .manager
            .approvals()
            .budget_exhausted(
                agent,
                request.workflow_id,
                request.key,
                request.summary,
                grace,
            )
            .await?;
        Ok(Response::new(wire_approval(&approval)))
    }

    async fn list_audit_events(
        &self,
        request: Request<shepherd_proto::audit::v1::ListAuditEventsRequest>,
    ) -> Result<Response<shepherd_proto::audit::v1::ListAuditEventsResponse>, Status> {
        shepherd_platform::audit::list_events_rpc(&self.audit, request).await
    }

    async fn get_manager_info(
        &self,
        _request: Request<pb::GetManagerInfoRequest>,
    ) -> Result<Response<pb::ManagerInfo>, Status> {
        let containment = self.manager.containment();
        let (node, term) = self.manager.node();
        let nodes = self.manager.nodes().await?;
        Ok(Response::new(pb::ManagerInfo {
            node: node.to_owned(),
            term: u64::try_from(term).unwrap_or(0),
            latest_sequence: self.manager.latest_sequence(),
            nodes: nodes.into_iter().map(convert::node).collect(),
            containment_mode: containment.mode().as_str().to_owned(),
            enforces_memory: containment.enforces(LimitKind::Memory),
            enforces_cpu: containment.enforces(LimitKind::Cpu),
            enforces_processes: containment.enforces(LimitKind::Processes),
            default_limits: Some(convert::limits(&containment.defaults())),
            security_warning: self.security_warning.to_string(),
        }))
    }
}

/// A task id (the caller's idempotency key): 1-MAX_TASK_ID_LEN bytes,
/// without NUL (PostgreSQL cannot store it), checked before any I/O.
/// The agent a call is about (recorded for its trace and audit entry).
fn agent_id(value: &str) -> Result<Uuid, Status> {
    let id = parse_agent_id("agent_id", value)?;
    record_id("agent_id", &id);
    Ok(id)
}

fn validate_task_id(field: &str, id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Ok(shepherd_platform::validate::text(
        field,
        id,
        MAX_TASK_ID_LEN,
    )?)
}

/// The event kinds a watcher asked for, each once; an unknown name is the
/// caller's mistake, said with the names there are.
fn event_kinds(names: &[String]) -> Result<Vec<&'static str>, Status> {
    let mut kinds = Vec::new();
    for name in names {
        let Some(kind) = KIND_NAMES.iter().find(|kind| **kind == name.as_str()) else {
            return Err(Status::invalid_argument(format!(
                "kinds: {name:?} is not an event kind; use one of {}",
                KIND_NAMES.join(", ")
            )));
        };
        if !kinds.contains(kind) {
            kinds.push(*kind);
        }
    }
    Ok(kinds)
}
