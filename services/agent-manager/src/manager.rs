//! The manager: what the API can ask of agents, tasks, sessions and the
//! event log. It validates, then hands process and session work to the
//! agent's supervisor and storage work to the store.

use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::approvals::Approvals;
use crate::containment::{Containment, Usage};
use crate::error::{Error, Result};
use crate::events::{Event, EventFilter, EventLog, WatchItem};
use crate::logs::LogStream;
use crate::model::task::{TaskOutcome, TaskState};
use crate::model::{AgentRecord, DesiredState, NewAgent, Runtime};
use crate::protocol::{DeliveredTask, FromAgent, HeldTask, ToAgent};
use crate::sessions::{AcceptedTasks, SessionHandle, SessionLoop, hash_token};
use crate::store::{AgentFilter, NodeRecord, Placement, Store, TaskClaim};
use crate::supervisor::{Supervisors, report_lost};
use shepherd_platform::error::Error as Shared;

fn new_credential() -> Result<String> {
    shepherd_platform::auth::random_secret()
        .map_err(|err| Error::internal(format!("no randomness for a credential: {err}")))
}

/// Longest task id (idempotency key) accepted.
pub(crate) const MAX_TASK_ID_LEN: usize = 200;
/// Largest task payload accepted.
pub(crate) const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

pub(crate) struct Manager {
    store: Store,
    events: EventLog,
    approvals: Approvals,
    supervisors: Arc<Supervisors>,
    session_heartbeat: std::time::Duration,
    /// How long an agent has to report a task it was told to stop.
    cancel_grace: std::time::Duration,
    /// Cancelled at shutdown: ends watchers and sessions so the server can
    /// drain.
    shutdown: CancellationToken,
}

/// The result of a dispatch.
#[derive(Debug, Clone)]
pub(crate) struct Dispatched {
    pub state: TaskState,
    pub attempt: u32,
    pub duplicate: bool,
    /// How a completed task ended.
    pub outcome: Option<TaskOutcome>,
    /// A completed task's output.
    pub output: String,
}

/// Where a task stands, for a caller reconciling its in-flight tasks.
#[derive(Debug, Clone)]
pub(crate) struct TaskStatus {
    pub task_id: String,
    /// None: never delivered (the manager has no record of it).
    pub state: Option<TaskState>,
    pub attempt: u32,
    /// How a completed task ended.
    pub outcome: Option<TaskOutcome>,
    pub output: String,
}

/// Where calls about an agent are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// On this node.
    Here,
    /// On the live node that supervises the agent.
    Peer { node: String, url: String },
}

/// Task states as this node knows them, and the tasks only another node
/// can judge (in flight on an agent it supervises), with its URL.
pub(crate) struct TaskStates {
    pub states: Vec<TaskStatus>,
    pub elsewhere: Vec<(String, String)>,
}

/// A task to deliver.
pub(crate) struct TaskRequest {
    pub agent_id: Uuid,
    pub task_id: String,
    /// The caller's attempt number (0: the manager numbers attempts).
    pub attempt: u32,
    pub payload: Vec<u8>,
    pub trace_context: std::collections::HashMap<String, String>,
    /// The task as data (an encoded `TaskSpec`), forwarded to the agent
    /// unread.
    pub spec: Option<Vec<u8>>,
    /// The workflow the dispatcher names in the spec (empty: none).
    pub workflow_id: String,
    /// How long the agent has for this attempt, from delivery.
    pub timeout: Option<std::time::Duration>,
}

impl Manager {
    pub(crate) fn new(
        supervisors: Arc<Supervisors>,
        approvals: Approvals,
        session_heartbeat: std::time::Duration,
        cancel_grace: std::time::Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let ctx = supervisors.context();
        Self {
            store: ctx.store.clone(),
            events: ctx.events.clone(),
            approvals,
            supervisors,
            session_heartbeat,
            cancel_grace,
            shutdown,
        }
    }

    /// Start-up: every agent this node supervises gets its supervisor,
    /// which adopts the process a previous manager left running or brings
    /// the agent back to its desired state through the one launch path.
    /// Tasks that were in flight are lost (no session of this node
    /// survived), except on adopted processes: those come back naming the
    /// tasks they hold.
    pub(crate) async fn recover(&self) -> Result<()> {
        let own = self.store.claim_own_agents().await?;
        let ids: Vec<Uuid> = own.iter().map(|agent| agent.id).collect();
        for agent in own {
            self.supervisors.spawn(agent);
        }
        let adopted = self.supervisors.reconcile_all().await;
        if !adopted.is_empty() {
            tracing::info!(agents = adopted.len(), "adopted running agent processes");
        }
        let not_adopted: Vec<Uuid> = ids.into_iter().filter(|id| !adopted.contains(id)).collect();
        let lost = self.store.mark_in_flight_lost(&not_adopted).await?;
        report_lost(&self.events, lost, "agent-manager restarted").await?;
        Ok(())
    }

    /// This node's name and term.
    pub(crate) fn node(&self) -> (&str, i64) {
        let fence = self.store.fence();
        (&fence.name, fence.term)
    }

    /// Every manager node sharing the database.
    pub(crate) async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.store.nodes().await
    }

    /// Where calls about the agent are served. An agent no live node
    /// supervises is served here; with `claim` (calls that change it:
    /// start, stop, restart, delete) this node takes it over first, so a
    /// process agent lost with its node can be started elsewhere.
    pub(crate) async fn route(&self, id: Uuid, claim: bool) -> Result<Route> {
        // The hot path (every dispatch): a live session here means the
        // agent's stream is open to this node, which supervises it; no
        // query needed. (A session whose agent went elsewhere ended when
        // its stream closed, and left the registry then.)
        if self.supervisors.context().sessions.is_live(id) && self.supervisors.supervises(id) {
            return Ok(Route::Here);
        }
        let me = self.node().0.to_owned();
        match self.store.placement(id).await? {
            Placement::Node { name, url } if name != me => Ok(Route::Peer { node: name, url }),
            Placement::Node { .. } => {
                self.ensure_supervised(id).await?;
                Ok(Route::Here)
            }
            Placement::Unheld if !claim => Ok(Route::Here),
            Placement::Unheld => match self.store.claim_agent(id).await? {
                Some(record) => {
                    tracing::info!(agent = %id, node = %me, "took over an agent no live manager node supervised");
                    self.supervisors.spawn(record);
                    Ok(Route::Here)
                }
                // Another node claimed it first.
                None => match self.store.placement(id).await? {
                    Placement::Node { name, url } if name != me => {
                        Ok(Route::Peer { node: name, url })
                    }
                    _ => Ok(Route::Here),
                },
            },
        }
    }

    /// A supervisor for an agent the database gives this node (its old one
    /// may have been retired while the agent was elsewhere).
    async fn ensure_supervised(&self, id: Uuid) -> Result<()> {
        if !self.supervisors.supervises(id) {
            self.supervisors.spawn(self.get_agent(id).await?);
        }
        Ok(())
    }

    pub(crate) async fn shutdown(&self) {
        self.supervisors.shutdown().await;
    }

    /// Creates (and, unless asked not to, starts) an agent; an external
    /// one comes with its credential, returned this once.
    pub(crate) async fn create_agent(
        &self,
        agent: NewAgent,
    ) -> Result<(AgentRecord, Option<String>)> {
        // Refused rather than ignored: a limit nobody enforces is a lie.
        if agent.spec.runtime == Runtime::External && agent.spec.limits != Default::default() {
            return Err(Error::failed_precondition(
                "agent.limits: an external agent runs outside this manager's containment; limit it where it is launched",
            ));
        }
        match agent.spec.runtime {
            Runtime::Kubernetes => self.check_kubernetes(&agent)?,
            _ => self.containment().check(&agent.spec.limits)?,
        }
        // Refused rather than run as someone else: only root can start a
        // process as another user, and the user must exist here.
        if let Some(user) = &agent.spec.run_as_user {
            crate::process::AgentUser::resolve(user)
                .map_err(|why| Error::failed_precondition(format!("agent.run_as_user: {why}")))?;
        }
        let credential = match agent.spec.runtime {
            Runtime::External => Some(new_credential()?),
            Runtime::Process | Runtime::Kubernetes => None,
        };
        let hash = credential.as_deref().map(hash_token);
        let record = self.store.insert_agent(&agent, hash.as_deref()).await?;
        self.events
            .append(
                record.id,
                0,
                Event::Created {
                    name: record.name.clone(),
                },
            )
            .await?;
        self.supervisors.spawn(record.clone());
        let record = match agent.desired_state {
            DesiredState::Running => self.supervisors.start(record.id).await?,
            DesiredState::Stopped => record,
        };
        Ok((record, credential))
    }

    /// A Kubernetes agent needs the API configured; its limits become the
    /// container's, where a process count has no equivalent.
    fn check_kubernetes(&self, agent: &NewAgent) -> Result<()> {
        if self.supervisors.context().kubernetes.is_none() {
            return Err(Error::failed_precondition(
                "agent.runtime: this manager has no Kubernetes API configured (set KUBERNETES_API_URL)",
            ));
        }
        if agent.spec.limits.max_processes.is_some() {
            return Err(Error::failed_precondition(
                "agent.limits.max_processes: a Pod's container has no process limit; leave it 0",
            ));
        }
        Ok(())
    }

    /// A new credential for an external agent (returned this once); the
    /// old one is refused from then on.
    pub(crate) async fn rotate_credential(&self, id: Uuid) -> Result<(AgentRecord, String)> {
        let agent = self.get_agent(id).await?;
        if agent.spec.runtime != Runtime::External {
            return Err(Error::failed_precondition(format!(
                "agent {id} is not external: its processes get a fresh session token at every launch"
            )));
        }
        let credential = new_credential()?;
        let record = self
            .store
            .set_credential_hash(id, &hash_token(&credential))
            .await?;
        Ok((record, credential))
    }

    pub(crate) async fn get_agent(&self, id: Uuid) -> Result<AgentRecord> {
        self.store
            .get_agent(id)
            .await?
            .ok_or_else(|| Error::AgentNotFound(id))
    }

    /// How agents are contained here.
    pub(crate) fn containment(&self) -> &Containment {
        &self.supervisors.context().containment
    }

    /// What the agent's whole process tree uses now (None: nothing runs).
    /// Approvals the node's agents asked for.
    pub(crate) fn approvals(&self) -> &Approvals {
        &self.approvals
    }

    pub(crate) fn usage(&self, id: Uuid) -> Option<Usage> {
        self.containment().usage(id)
    }

    pub(crate) async fn list_agents(
        &self,
        filter: &AgentFilter,
        limit: i64,
    ) -> Result<Vec<AgentRecord>> {
        self.store.list_agents(filter, limit).await
    }

    pub(crate) async fn start_agent(&self, id: Uuid) -> Result<AgentRecord> {
        self.supervisors.start(id).await
    }

    pub(crate) async fn stop_agent(&self, id: Uuid) -> Result<AgentRecord> {
        self.supervisors.stop(id).await
    }

    pub(crate) async fn restart_agent(&self, id: Uuid) -> Result<AgentRecord> {
        self.supervisors.restart(id, "restarted on request").await
    }

    pub(crate) async fn delete_agent(&self, id: Uuid) -> Result<()> {
        self.supervisors.delete(id).await
    }

    pub(crate) async fn agent_logs(
        &self,
        id: Uuid,
        stream: LogStream,
        lines: usize,
    ) -> Result<Vec<String>> {
        // NOT_FOUND for unknown agents rather than an empty log.
        self.get_agent(id).await?;
        self.supervisors
            .context()
            .logs
            .tail(id, stream, lines)
            .await
            .map_err(|err| Error::internal(format!("reading logs of agent {id}: {err}")))
    }

    /// Delivers a task to the agent's live session, at most once per task id
    /// unless the previous attempt was lost.
    ///
    /// The claim and the hand-over run in a task of their own: a caller that
    /// goes away halfway (a cancelled RPC) must not leave a task claimed but
    /// never handed to the session, or every later dispatch of it would find
    /// it "in flight" and deliver nothing until the session ended.
    pub(crate) async fn dispatch(self: &Arc<Self>, request: TaskRequest) -> Result<Dispatched> {
        let manager = self.clone();
        tokio::spawn(async move { manager.deliver(request).await }.in_current_span())
            .await
            .map_err(|err| Error::internal(format!("delivering the task failed: {err}")))?
    }

    async fn deliver(&self, request: TaskRequest) -> Result<Dispatched> {
        let Some(session) = self.supervisors.context().sessions.get(request.agent_id) else {
            let agent = self.get_agent(request.agent_id).await?;
            return Err(Error::AgentNotReady {
                agent: agent.id,
                status: agent.status.as_str().to_owned(),
            });
        };
        let claim = self
            .store
            .claim_task(
                &request.task_id,
                request.agent_id,
                session.session_id,
                session.generation,
                request.attempt,
            )
            .await?;
        let attempt = match claim {
            TaskClaim::Existing {
                state,
                attempt,
                outcome,
                output,
            } => {
                // Acceptance is not stored; the live session knows it.
                let state = match state {
                    TaskState::Delivered if session.accepted.contains(&request.task_id) => {
                        TaskState::Accepted
                    }
                    other => other,
                };
                return Ok(Dispatched {
                    state,
                    attempt,
                    duplicate: true,
                    outcome,
                    output,
                });
            }
            TaskClaim::Deliver { attempt } => attempt,
        };
        // A crash here leaves the attempt recorded as delivered but never
        // handed over: start-up declares it lost (no session survives).
        shepherd_platform::failpoint::hit("manager.after_delivery_recorded");
        let message = ToAgent::Task(DeliveredTask {
            task_id: request.task_id.clone(),
            payload: request.payload,
            attempt,
            trace_context: request.trace_context,
            spec: request.spec,
            workflow_id: request.workflow_id,
            deadline: request
                .timeout
                .and_then(|timeout| std::time::SystemTime::now().checked_add(timeout)),
        });
        if session.tasks.send(message).await.is_err() {
            // The session ended between lookup and delivery. Its sweep may
            // have run before our claim committed, so record the loss here
            // (a no-op if the sweep already did).
            let lost = self
                .store
                .mark_task_lost(&request.task_id, session.session_id)
                .await?;
            report_lost(&self.events, lost, "agent session closed during delivery").await?;
            return Err(Error::unavailable(format!(
                "agent {}'s session closed while the task was being delivered; the attempt was recorded as lost, dispatch again once the agent is ready",
                request.agent_id
            )));
        }
        Ok(Dispatched {
            state: TaskState::Delivered,
            attempt,
            duplicate: false,
            outcome: None,
            output: String::new(),
        })
    }

    /// Where each task stands (`None`: never delivered). A task recorded
    /// as in flight on a session that is no longer its agent's live one is
    /// settled as lost here: the session's own sweep may have failed (the
    /// database was down when it ended), and an answer must never be "in
    /// flight" for a task that nobody runs.
    pub(crate) async fn task_states(&self, task_ids: &[String]) -> Result<TaskStates> {
        // Only the node that supervises an agent knows whether its
        // sessions are live; the caller asks it about these.
        let elsewhere = self.store.tasks_held_elsewhere(task_ids).await?;
        let remote: std::collections::HashSet<&str> =
            elsewhere.iter().map(|(task, _)| task.as_str()).collect();
        let stored = self.store.task_states(task_ids).await?;
        let mut by_id: std::collections::HashMap<String, TaskStatus> =
            std::collections::HashMap::with_capacity(stored.len());
        let sessions = &self.supervisors.context().sessions;
        for task in stored {
            let live = sessions.get(task.agent_id);
            let on_live_session = live
                .as_ref()
                .is_some_and(|session| session.session_id == task.session_id);
            let state = match task.state {
                // Unless its process may still come back holding it.
                TaskState::Delivered | TaskState::Accepted
                    if !on_live_session
                        && !sessions.reconnecting(task.agent_id)
                        && !remote.contains(task.task_id.as_str()) =>
                {
                    let lost = self
                        .store
                        .mark_task_lost(&task.task_id, task.session_id)
                        .await?;
                    report_lost(&self.events, lost, "its session is no longer live").await?;
                    TaskState::Lost
                }
                TaskState::Delivered
                    if live
                        .as_ref()
                        .is_some_and(|session| session.accepted.contains(&task.task_id)) =>
                {
                    TaskState::Accepted
                }
                other => other,
            };
            let status = TaskStatus {
                task_id: task.task_id.clone(),
                state: Some(state),
                attempt: task.attempt,
                outcome: task.outcome,
                output: task.output,
            };
            by_id.insert(task.task_id, status);
        }
        let states = task_ids
            .iter()
            .map(|id| {
                by_id.remove(id).unwrap_or_else(|| TaskStatus {
                    task_id: id.clone(),
                    state: None,
                    attempt: 0,
                    outcome: None,
                    output: String::new(),
                })
            })
            .collect();
        Ok(TaskStates { states, elsewhere })
    }

    /// Asks the agent running `task_id` to stop it; the outcome CANCELLED
    /// follows as a TaskCompleted event. Returns the task's state (None:
    /// never delivered); only a task in flight is asked to stop.
    pub(crate) async fn cancel_task(
        &self,
        agent: Uuid,
        task_id: &str,
    ) -> Result<Option<TaskState>> {
        let status = self
            .task_states(&[task_id.to_owned()])
            .await?
            .states
            .pop()
            .ok_or_else(|| Error::internal("no answer about the task"))?;
        if let Some(TaskState::Delivered | TaskState::Accepted) = status.state
            && let Some(session) = self.supervisors.context().sessions.get(agent)
        {
            let cancel = ToAgent::Cancel {
                task_id: task_id.to_owned(),
                attempt: status.attempt,
                reason: "cancelled on request".into(),
            };
            // A session that just ended has declared the task lost.
            let _ = session.tasks.send(cancel).await;
        }
        Ok(status.state)
    }

    /// The last committed event sequence.
    pub(crate) fn latest_sequence(&self) -> u64 {
        self.events.latest()
    }

    pub(crate) fn watch_events(
        &self,
        after: u64,
        filter: EventFilter,
    ) -> mpsc::Receiver<WatchItem> {
        let (out, receiver) = mpsc::channel(256);
        let events = self.events.clone();
        let stop = self.shutdown.child_token();
        tokio::spawn(async move { events.watch(after, filter, out, stop).await });
        receiver
    }

    pub(crate) async fn prune_events(&self, through: u64) -> Result<(u64, u64)> {
        self.events.prune(through).await
    }

    /// An external agent's session may land on any node: the node it lands
    /// on supervises it from then on (its supervisor checks the credential
    /// first). A process agent connects to the node that launched it.
    async fn supervise_session_of(&self, agent_id: Uuid) -> Result<()> {
        if self.supervisors.supervises(agent_id) {
            return Ok(());
        }
        match self.store.get_agent(agent_id).await? {
            Some(agent) if agent.spec.runtime == Runtime::External => {
                self.supervisors.spawn(agent);
                Ok(())
            }
            // Refused as unauthenticated by the caller's NotFound mapping.
            _ => Err(Error::AgentNotFound(agent_id)),
        }
    }

    /// Authenticates a session's hello and runs the session. Returns the
    /// messages to send to the agent (the first is `Welcome`).
    pub(crate) async fn open_session<S>(
        &self,
        agent_id: Uuid,
        token: &str,
        held: Vec<HeldTask>,
        instance: String,
        inbound: S,
    ) -> Result<mpsc::Receiver<ToAgent>>
    where
        S: Stream<Item = Result<FromAgent, String>> + Unpin + Send + 'static,
    {
        let (tasks_tx, tasks) = mpsc::channel(1024);
        let mut handle = SessionHandle {
            session_id: Uuid::new_v4(),
            // Set by the supervisor, which knows the current generation.
            generation: 0,
            tasks: tasks_tx,
            cancel: self.shutdown.child_token(),
            accepted: AcceptedTasks::default(),
        };
        let token_hash = hash_token(token);
        let mut opened = Err(Error::AgentNotFound(agent_id));
        // Twice at most: an external agent's supervisor spawned here can be
        // retired by the lease tick before the session reaches it (the row
        // still named the old node); the second one sees it.
        for _ in 0..2 {
            self.supervise_session_of(agent_id).await?;
            opened = self
                .supervisors
                .session_opened(
                    agent_id,
                    handle.clone(),
                    token_hash.clone(),
                    held.clone(),
                    instance.clone(),
                )
                .await;
            if !matches!(
                opened,
                Err(Error::Common(Shared::NotFound(_)) | Error::AgentNotFound(_))
            ) {
                break;
            }
        }
        let opened = opened.map_err(|err| match err {
            // Do not tell an unauthenticated caller which ids exist.
            Error::Common(Shared::NotFound(_)) | Error::AgentNotFound(_) => Error::StaleSession(
                format!("session refused: {agent_id} is not an agent with a running process"),
            ),
            other => other,
        })?;
        let generation = opened.agent.generation;
        handle.generation = generation;

        let (outbound, receiver) = mpsc::channel(256);
        let welcome = ToAgent::Welcome {
            generation,
            heartbeat_interval: self.session_heartbeat,
        };
        // Capacity is free: this cannot fail before the receiver is returned.
        let _ = outbound.try_send(welcome);
        let session = SessionLoop {
            agent_id,
            handle: handle.clone(),
            inbound,
            tasks,
            outbound,
            heartbeat_interval: self.session_heartbeat,
            cancel_grace: self.cancel_grace,
            events: self.events.clone(),
            approvals: self.approvals.clone(),
            carried: opened.carried,
        };
        let supervisors = self.supervisors.clone();
        tokio::spawn(async move {
            let end = session.run().await;
            tracing::info!(agent = %agent_id, reason = %end.reason, "agent session ended");
            supervisors
                .session_closed(agent_id, handle.session_id, end.reason, end.wedged)
                .await;
        });
        Ok(receiver)
    }
}
