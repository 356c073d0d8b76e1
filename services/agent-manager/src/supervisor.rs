//! One supervisor per agent: an actor that owns the agent's process, its
//! observed state and its current session. Every change to those goes
//! through its mailbox, so they change in one order, one at a time: no
//! check-then-act races between an API call, a process exit and a session.
//!
//! `launch` is the one path by which a process starts. A launch of an agent
//! that ran before is a restart: after the process runs and the row is
//! updated it appends `AgentRestarted{generation}`. `RestartAgent`, the
//! restart policy and start-up reconciliation all come through it.
//!
//! Live restore (on by default): a manager that shuts down leaves its agent
//! processes running, and the next one adopts each process it can prove is
//! the one recorded (`AgentProcess::adopt`) instead of launching a new one.
//! An adopted process keeps its generation (no `AgentRestarted`) and its
//! session token, and reconnects naming the tasks it holds. Until it does,
//! or its reconnect window closes, its tasks count as in flight.

use shepherd_platform::timer::sleep_until_some;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::containment::Containment;
use crate::error::{Error, Result};
use crate::events::{Event, EventLog};
use crate::kubernetes::Kubernetes;
use crate::logs::LogDir;
use crate::model::task::TaskState;
use crate::model::{AgentRecord, AgentStatus, DesiredState};
use crate::model::{RestartMode, Runtime};
use crate::process::{AgentProcess, ExitInfo, Launch, kill_orphan};
use crate::protocol::{HeldTask, ToAgent};
use crate::sessions::{CarriedTask, SessionHandle, Sessions, hash_token, new_token};
use crate::store::{LostTask, Store};
use crate::workload::Workload;
use shepherd_platform::auth::constant_time_eq;

/// What every supervisor shares.
pub(crate) struct Context {
    pub store: Store,
    /// Keeps each agent's process tree together (kill, limits, usage).
    pub containment: Arc<Containment>,
    /// The Kubernetes API, when configured (KUBERNETES_API_URL).
    pub kubernetes: Option<Arc<Kubernetes>>,
    pub events: EventLog,
    pub sessions: Sessions,
    pub logs: LogDir,
    /// URL agent processes use to reach the manager.
    pub manager_url: String,
    /// CA agents trust for that URL (TLS).
    pub manager_ca_file: Option<std::path::PathBuf>,
    /// The user agent processes run as (None: the manager's).
    pub agent_user: Option<crate::process::AgentUser>,
    /// SIGTERM → SIGKILL grace period.
    pub stop_grace: Duration,
    /// Leave processes running at shutdown and adopt them at start-up.
    pub live_restore: bool,
    /// How long a process whose session dropped (or that was adopted) has
    /// to come back on a new session before its tasks count as lost.
    pub reconnect_grace: Duration,
}

type Reply<T> = oneshot::Sender<Result<T>>;

/// Longest instance id an external agent may name itself by.
pub(crate) const MAX_INSTANCE_ID: usize = 128;

enum Command {
    Start(Reply<AgentRecord>),
    Stop(Reply<AgentRecord>),
    Restart(String, Reply<AgentRecord>),
    Delete(Reply<()>),
    /// A session presents the hash of its token and the tasks its process
    /// holds from earlier sessions.
    SessionOpened {
        session: SessionHandle,
        token_hash: Vec<u8>,
        held: Vec<HeldTask>,
        /// The connecting process's instance id (external agents).
        instance: String,
        reply: Reply<OpenedSession>,
    },
    SessionClosed {
        session_id: Uuid,
        reason: String,
        /// The agent ignored a Cancel: restart it per its policy.
        wedged: bool,
    },
    /// Manager start-up: bring the agent back to what the user asked for.
    /// Answers whether its running process was adopted.
    Reconcile(Reply<bool>),
    /// Manager shutdown: stop the process, keep the desired state.
    Shutdown,
    /// Another node supervises the agent now (or it was deleted): end the
    /// session and process this node holds of it, writing nothing.
    /// Answers false (and goes on) if the agent turns out to be this node's.
    Retire(Reply<bool>),
    /// This node's lease had lapsed and peers may have declared the agent
    /// LOST: show it as it is.
    Refresh,
}

enum Input {
    Command(Option<Command>),
    Exited(ExitInfo),
    BackoffElapsed,
    /// The process did not come back on a new session in time.
    ReconnectWindowClosed,
}

/// An accepted session: the agent as of then (its generation is the
/// session's) and the tasks carried over to it.
pub(crate) struct OpenedSession {
    pub agent: AgentRecord,
    pub carried: Vec<CarriedTask>,
}

/// The supervisors of all agents.
pub(crate) struct Supervisors {
    ctx: Arc<Context>,
    actors: Mutex<HashMap<Uuid, Actor>>,
}

struct Actor {
    mailbox: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl Supervisors {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            actors: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn context(&self) -> &Context {
        &self.ctx
    }

    /// Starts the supervisor of a stored agent (once: an agent never has
    /// two supervisors).
    pub(crate) fn spawn(&self, record: AgentRecord) {
        let mut actors = self.lock();
        if actors.contains_key(&record.id) {
            return;
        }
        let (mailbox, commands) = mpsc::channel(64);
        let id = record.id;
        let supervisor = Supervisor {
            ctx: self.ctx.clone(),
            record,
            process: None,
            token_hash: None,
            backoff_until: None,
            reconnect_until: None,
            restarts: VecDeque::new(),
            commands,
        };
        let task = tokio::spawn(supervisor.run());
        actors.insert(id, Actor { mailbox, task });
    }

    pub(crate) async fn start(&self, id: Uuid) -> Result<AgentRecord> {
        self.call(id, Command::Start).await
    }

    pub(crate) async fn stop(&self, id: Uuid) -> Result<AgentRecord> {
        self.call(id, Command::Stop).await
    }

    pub(crate) async fn restart(&self, id: Uuid, reason: &str) -> Result<AgentRecord> {
        let reason = reason.to_owned();
        self.call(id, |reply| Command::Restart(reason, reply)).await
    }

    /// The agents this node has supervisors for.
    pub(crate) fn ids(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    pub(crate) fn supervises(&self, id: Uuid) -> bool {
        self.lock().contains_key(&id)
    }

    /// Ends the supervision of an agent that is no longer this node's.
    pub(crate) async fn retire(&self, id: Uuid) {
        if let Ok(true) = self.call(id, Command::Retire).await {
            self.lock().remove(&id);
        }
    }

    /// Every supervisor shows its agent as it is (after a lapsed lease).
    pub(crate) async fn refresh_all(&self) {
        for id in self.ids() {
            let _ = self.send(id, Command::Refresh).await;
        }
    }

    pub(crate) async fn delete(&self, id: Uuid) -> Result<()> {
        self.call(id, Command::Delete).await?;
        self.lock().remove(&id);
        Ok(())
    }

    /// Authenticates and installs a session, carrying over the tasks its
    /// process holds.
    pub(crate) async fn session_opened(
        &self,
        id: Uuid,
        session: SessionHandle,
        token_hash: Vec<u8>,
        held: Vec<HeldTask>,
        instance: String,
    ) -> Result<OpenedSession> {
        self.call(id, |reply| Command::SessionOpened {
            session,
            token_hash,
            held,
            instance,
            reply,
        })
        .await
    }

    /// Fire and forget: the session loop is over either way.
    pub(crate) async fn session_closed(
        &self,
        id: Uuid,
        session_id: Uuid,
        reason: String,
        wedged: bool,
    ) {
        let _ = self
            .send(
                id,
                Command::SessionClosed {
                    session_id,
                    reason,
                    wedged,
                },
            )
            .await;
    }

    /// Reconciles every agent (concurrently); returns the agents whose
    /// running processes were adopted.
    pub(crate) async fn reconcile_all(&self) -> Vec<Uuid> {
        let ids: Vec<Uuid> = self.lock().keys().copied().collect();
        let calls = ids.iter().map(|id| self.call(*id, Command::Reconcile));
        let adopted = futures_util::future::join_all(calls).await;
        ids.into_iter()
            .zip(adopted)
            .filter_map(|(id, adopted)| matches!(adopted, Ok(true)).then_some(id))
            .collect()
    }

    /// Stops every process (desired states untouched) and waits for the
    /// supervisors to finish.
    pub(crate) async fn shutdown(&self) {
        let actors: Vec<Actor> = self.lock().drain().map(|(_, actor)| actor).collect();
        for actor in &actors {
            let _ = actor.mailbox.send(Command::Shutdown).await;
        }
        for actor in actors {
            let _ = actor.task.await;
        }
    }

    async fn call<T>(&self, id: Uuid, command: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, result) = oneshot::channel();
        self.send(id, command(reply)).await?;
        result.await.map_err(|_| Error::AgentNotFound(id))?
    }

    async fn send(&self, id: Uuid, command: Command) -> Result<()> {
        let mailbox = self
            .lock()
            .get(&id)
            .map(|actor| actor.mailbox.clone())
            .ok_or_else(|| Error::AgentNotFound(id))?;
        mailbox
            .send(command)
            .await
            .map_err(|_| Error::AgentNotFound(id))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Actor>> {
        self.actors.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Supervisor {
    ctx: Arc<Context>,
    /// The stored row as last written by this supervisor (it is the only
    /// writer of the observed columns, so the copy is current).
    record: AgentRecord,
    process: Option<Workload>,
    /// Hash of the running process's session token. Kept here, not read
    /// back from the database, so that a process that connects the instant
    /// it starts is checked against its own generation's token.
    token_hash: Option<Vec<u8>>,
    backoff_until: Option<Instant>,
    /// While the running process is expected back on a new session: when
    /// its tasks stop counting as in flight.
    reconnect_until: Option<Instant>,
    /// When automatic restarts happened, for the restart budget.
    restarts: VecDeque<Instant>,
    commands: mpsc::Receiver<Command>,
}

impl Supervisor {
    fn id(&self) -> Uuid {
        self.record.id
    }

    async fn run(mut self) {
        loop {
            let input = self.next_input().await;
            let done = match input {
                Input::Command(Some(command)) => self.handle(command).await,
                // Every handle is gone: the manager is going away.
                Input::Command(None) => {
                    self.shutdown().await;
                    true
                }
                Input::Exited(exit) => {
                    let result = self.on_exit(exit).await;
                    self.log_err("process exit", result);
                    false
                }
                Input::BackoffElapsed => {
                    self.backoff_until = None;
                    let result = self.launch("restart policy").await;
                    self.log_err("automatic restart", result.map(drop));
                    false
                }
                Input::ReconnectWindowClosed => {
                    self.reconnect_window_closed().await;
                    false
                }
            };
            if done {
                return;
            }
        }
    }

    async fn next_input(&mut self) -> Input {
        let Self {
            process,
            backoff_until,
            reconnect_until,
            commands,
            ..
        } = self;
        match (process, *backoff_until) {
            (Some(process), _) => tokio::select! {
                exit = process.wait() => Input::Exited(exit),
                command = commands.recv() => Input::Command(command),
                _ = sleep_until_some(*reconnect_until) => Input::ReconnectWindowClosed,
            },
            (None, Some(at)) => tokio::select! {
                _ = tokio::time::sleep_until(at) => Input::BackoffElapsed,
                command = commands.recv() => Input::Command(command),
            },
            // An external agent has no process, but may have a window to
            // reconnect in.
            (None, None) => tokio::select! {
                command = commands.recv() => Input::Command(command),
                _ = sleep_until_some(*reconnect_until) => Input::ReconnectWindowClosed,
            },
        }
    }

    /// Handles one command; true when the supervisor is done.
    async fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Start(reply) => {
                let _ = reply.send(self.start().await);
            }
            Command::Stop(reply) => {
                let _ = reply.send(self.stop().await);
            }
            Command::Restart(reason, reply) => {
                let _ = reply.send(self.restart(&reason).await);
            }
            Command::SessionOpened {
                session,
                token_hash,
                held,
                instance,
                reply,
            } => {
                let opened = if self.external() {
                    self.external_session_opened(session, &token_hash, held, instance)
                        .await
                } else {
                    self.session_opened(session, &token_hash, held).await
                };
                let _ = reply.send(opened);
            }
            Command::SessionClosed {
                session_id,
                reason,
                wedged,
            } => {
                let result = self.session_closed(session_id, &reason, wedged).await;
                self.log_err("session close", result);
            }
            Command::Reconcile(reply) => {
                let result = self.reconcile().await;
                let adopted = matches!(result, Ok(true));
                self.log_err("start-up reconciliation", result.map(drop));
                let _ = reply.send(Ok(adopted));
            }
            Command::Delete(reply) => {
                let result = self.delete().await;
                let failed = result.is_err();
                let _ = reply.send(result);
                return !failed;
            }
            Command::Shutdown => {
                self.shutdown().await;
                return true;
            }
            Command::Retire(reply) => {
                let retire = self.moved_away().await;
                if retire {
                    self.retire().await;
                }
                let _ = reply.send(Ok(retire));
                return retire;
            }
            Command::Refresh => {
                let result = self.refresh().await;
                self.log_err("refresh after a lapsed lease", result);
            }
        }
        false
    }

    /// Whether the database gives the agent to another node (or no longer
    /// has it). Unsure (database down): no.
    async fn moved_away(&self) -> bool {
        match self.ctx.store.get_agent(self.id()).await {
            Ok(Some(agent)) => agent.node.as_deref() != Some(self.ctx.store.fence().name.as_str()),
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// See `Command::Retire`. A process this node launched must not run
    /// beside the one the new supervisor launches.
    async fn retire(&mut self) {
        tracing::warn!(agent = %self.id(), "another manager node supervises this agent now; letting go of it");
        self.close_reconnect_window();
        if let Some(session) = self.ctx.sessions.remove(self.id()) {
            session.cancel.cancel();
        }
        if let Some(process) = self.process.take() {
            let exit = process.terminate(self.ctx.stop_grace).await;
            tracing::info!(agent = %self.id(), %exit, "stopped the process of an agent this node no longer supervises");
        }
    }

    /// See `Command::Refresh`.
    async fn refresh(&mut self) -> Result<()> {
        let Some(stored) = self.ctx.store.get_agent(self.id()).await? else {
            return Ok(());
        };
        if stored.status != AgentStatus::Lost {
            return Ok(());
        }
        if self.ctx.sessions.get(self.id()).is_some() {
            self.record = self
                .ctx
                .store
                .set_status(self.id(), AgentStatus::Ready, "", self.record.pid)
                .await?;
            self.append(Event::Ready).await?;
        } else if self.process.is_some() || self.external() {
            self.record = self
                .ctx
                .store
                .set_status(
                    self.id(),
                    AgentStatus::Starting,
                    "its manager node is back; waiting for its session",
                    self.record.pid,
                )
                .await?;
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<AgentRecord> {
        self.set_desired(DesiredState::Running).await?;
        if self.external() {
            // Nothing to launch: it may connect now.
            if self.ctx.sessions.get(self.id()).is_none() {
                self.record = self
                    .ctx
                    .store
                    .set_status(
                        self.id(),
                        AgentStatus::Starting,
                        "waiting for the external agent to connect",
                        None,
                    )
                    .await?;
            }
            return Ok(self.record.clone());
        }
        if self.process.is_some() {
            // Already running: a quiet no-op.
            return Ok(self.record.clone());
        }
        self.reset_restart_budget();
        self.launch("started on request").await
    }

    async fn stop(&mut self) -> Result<AgentRecord> {
        self.set_desired(DesiredState::Stopped).await?;
        self.backoff_until = None;
        self.ask_to_exit("agent stopped");
        self.terminate("agent stopped").await?;
        if self.record.status != AgentStatus::Stopped {
            self.record = self
                .ctx
                .store
                .set_status(self.id(), AgentStatus::Stopped, "stopped on request", None)
                .await?;
            self.append(Event::Stopped).await?;
        }
        Ok(self.record.clone())
    }

    async fn restart(&mut self, reason: &str) -> Result<AgentRecord> {
        self.set_desired(DesiredState::Running).await?;
        if self.external() {
            // Its own supervisor brings it back; the new instance's session
            // is the restart (generation + 1, AgentRestarted).
            self.ask_to_exit(reason);
            return Ok(self.record.clone());
        }
        self.terminate("agent restarting").await?;
        self.reset_restart_budget();
        self.launch(reason).await
    }

    async fn delete(&mut self) -> Result<()> {
        self.backoff_until = None;
        self.ask_to_exit("agent deleted");
        self.terminate("agent deleted").await?;
        self.ctx.store.delete_agent(self.id()).await?;
        self.append(Event::Deleted).await?;
        self.ctx.logs.remove(self.id()).await;
        Ok(())
    }

    async fn shutdown(&mut self) {
        if self.process.is_none() {
            return;
        }
        if self.ctx.live_restore {
            // The process keeps running and the next manager adopts it.
            tracing::info!(agent = %self.id(), pid = self.record.pid, "leaving the agent running for the next manager");
            return;
        }
        let result = self.terminate("manager shutting down").await;
        self.log_err("shutdown", result);
        let result = self
            .ctx
            .store
            .set_status(self.id(), AgentStatus::Exited, "manager shut down", None)
            .await;
        self.log_err("shutdown", result.map(drop));
    }

    /// Manager start-up: no process of ours runs. A process a previous
    /// manager left running is adopted if live restore is on, the agent
    /// should run and the process proves to be the recorded one (returns
    /// true). Otherwise it is killed and the agent is brought to its desired
    /// state through the one launch path.
    async fn reconcile(&mut self) -> Result<bool> {
        if self.external() {
            return self.reconcile_external().await;
        }
        if self.record.spec.runtime == Runtime::Kubernetes {
            return self.reconcile_pods().await;
        }
        // Read once: what adoption takes over, and what an orphan kill
        // checks the pid against.
        let launched = self.ctx.store.launched_process(self.id()).await?;
        let started_at = launched
            .as_ref()
            .map(|launched| launched.identity.started_at);
        if self.ctx.live_restore
            && self.record.desired_state == DesiredState::Running
            && self.adopt(launched).await?
        {
            return Ok(true);
        }
        if let Some(pid) = self.record.pid
            && kill_orphan(pid, self.id(), started_at)
        {
            tracing::info!(agent = %self.id(), pid, "killed a process left by a previous manager");
        }
        // And whatever else of its tree is left (escaped children too).
        self.ctx
            .containment
            .cell(self.id())
            .clear(self.record.pid.unwrap_or(0))
            .await;
        match self.record.desired_state {
            DesiredState::Running => {
                self.launch("manager start-up reconciliation").await?;
            }
            DesiredState::Stopped => {
                if self.record.pid.is_some()
                    || self.record.status == AgentStatus::Ready
                    || self.record.status == AgentStatus::Starting
                {
                    self.record = self
                        .ctx
                        .store
                        .set_status(self.id(), AgentStatus::Stopped, "", None)
                        .await?;
                }
            }
        }
        Ok(false)
    }

    /// Manager start-up, Kubernetes agent: Pods of earlier generations are
    /// deleted (not adopted, yet), and the agent brought to its desired
    /// state through the one launch path.
    async fn reconcile_pods(&mut self) -> Result<bool> {
        if let Some(kubernetes) = &self.ctx.kubernetes {
            match kubernetes.delete_agent_pods(self.id()).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(agent = %self.id(), deleted, "deleted Pods a previous manager left")
                }
                Err(err) => {
                    tracing::warn!(agent = %self.id(), error = %err, "could not delete the agent's old Pods")
                }
            }
        }
        match self.record.desired_state {
            DesiredState::Running => {
                self.launch("manager start-up reconciliation").await?;
            }
            DesiredState::Stopped if self.record.status != AgentStatus::Stopped => {
                self.record = self
                    .ctx
                    .store
                    .set_status(self.id(), AgentStatus::Stopped, "", None)
                    .await?;
            }
            DesiredState::Stopped => {}
        }
        Ok(false)
    }

    /// Takes over the recorded process (`launched`) if it still runs; true
    /// if it did.
    async fn adopt(&mut self, launched: Option<crate::store::LaunchedProcess>) -> Result<bool> {
        let Some(launched) = launched else {
            return Ok(false);
        };
        let cell = self.ctx.containment.adopted(self.id(), &self.record.name);
        let Some(process) =
            AgentProcess::adopt(launched.identity, self.id(), self.record.generation, cell)
        else {
            return Ok(false);
        };
        let pid = process.pid();
        self.process = Some(Workload::Process(process));
        self.token_hash = Some(launched.token_hash);
        self.expect_reconnect();
        self.record = self
            .ctx
            .store
            .set_status(
                self.id(),
                AgentStatus::Starting,
                "adopted after a manager restart; waiting for its session",
                Some(pid),
            )
            .await?;
        tracing::info!(agent = %self.id(), pid, generation = self.record.generation, "adopted a running agent process");
        Ok(true)
    }

    /// Opens the reconnect window of the running process.
    fn expect_reconnect(&mut self) {
        let until = Instant::now() + self.ctx.reconnect_grace;
        self.reconnect_until = Some(until);
        self.ctx.sessions.expect_reconnect(self.id(), until);
    }

    /// The process did not come back in time: what it held is lost (it may
    /// still reconnect later; its reports are then recorded by attempt).
    async fn reconnect_window_closed(&mut self) {
        self.close_reconnect_window();
        if self.ctx.sessions.get(self.id()).is_none() {
            self.sweep(None, "the agent did not reconnect in time")
                .await;
        }
    }

    /// The one launch path (see the module docs).
    async fn launch(&mut self, reason: &str) -> Result<AgentRecord> {
        let generation = self.record.generation + 1;
        let token = new_token()
            .map_err(|err| Error::Internal(format!("no randomness for a session token: {err}")))?;
        let launch = Launch {
            agent_id: self.id(),
            agent_name: &self.record.name,
            spec: &self.record.spec,
            generation,
            session_token: &token,
            manager_url: &self.ctx.manager_url,
            manager_ca_file: self.ctx.manager_ca_file.as_deref(),
            run_as: match &self.record.spec.run_as_user {
                // Checked at creation; a user removed since fails the launch.
                Some(user) => Some(
                    crate::process::AgentUser::resolve(user)
                        .map_err(crate::error::Error::FailedPrecondition)?,
                ),
                None => self.ctx.agent_user,
            },
        };
        let spawned = match self.record.spec.runtime {
            Runtime::Kubernetes => self.create_pod(&launch).await,
            _ => self.spawn_process(&launch).await,
        };
        let process = match spawned {
            Ok(process) => process,
            Err(err) => {
                let message = format!(
                    "could not launch {}: {err}",
                    launch_target(&self.record.spec)
                );
                self.record = self
                    .ctx
                    .store
                    .set_status(self.id(), AgentStatus::Failed, &message, None)
                    .await?;
                return Err(Error::FailedPrecondition(message));
            }
        };
        let pid = process.pid().unwrap_or(0);
        let identity = process.identity();
        self.process = Some(process);
        let token_hash = hash_token(&token);
        self.token_hash = Some(token_hash.clone());
        match self
            .ctx
            .store
            .record_launch(self.id(), generation, identity.as_ref(), &token_hash)
            .await
        {
            Ok(record) => self.record = record,
            Err(err) => {
                // Without its token stored the process could never connect.
                self.terminate("launch could not be recorded").await?;
                return Err(err);
            }
        }
        self.append(Event::Started { pid }).await?;
        if generation > 1 {
            crate::metrics::agent_restarted(self.id(), &self.record.name);
            self.append(Event::Restarted {
                generation,
                reason: reason.to_owned(),
            })
            .await?;
        }
        tracing::info!(agent = %self.id(), generation, pid, reason, "agent process launched");
        Ok(self.record.clone())
    }

    /// A process in the agent's container on this node.
    async fn spawn_process(&self, launch: &Launch<'_>) -> std::result::Result<Workload, String> {
        let cell = self
            .ctx
            .containment
            .prepare(self.id(), &self.record.name, self.record.spec.limits)
            .await
            .map_err(|err| format!("its container could not be prepared: {err}"))?;
        AgentProcess::spawn(launch, &self.ctx.logs, cell)
            .map(Workload::Process)
            .map_err(|err| err.to_string())
    }

    /// A Pod through the Kubernetes API.
    async fn create_pod(&self, launch: &Launch<'_>) -> std::result::Result<Workload, String> {
        let kubernetes = self.ctx.kubernetes.as_ref().ok_or_else(|| {
            "this manager has no Kubernetes API configured (KUBERNETES_API_URL)".to_owned()
        })?;
        kubernetes
            .launch(launch)
            .await
            .map(Workload::Pod)
            .map_err(|err| err.to_string())
    }

    /// The process exited on its own: record it, close its session, and
    /// apply the restart policy.
    async fn on_exit(&mut self, exit: ExitInfo) -> Result<()> {
        // Nothing of the old tree may run once its tasks are reported lost
        // (a retry would run beside its predecessor) or a new generation
        // starts: kill the rest of it first.
        if let Some(process) = self.process.take() {
            process.clear().await;
        }
        self.token_hash = None;
        self.close_reconnect_window();
        tracing::info!(agent = %self.id(), %exit, "agent process exited");
        self.record_exit(exit, &exit.to_string()).await?;
        self.drop_session(&format!("process {exit}")).await?;

        let policy = &self.record.spec.restart_policy;
        if self.record.desired_state != DesiredState::Running
            || !policy.restarts_after(exit.success())
        {
            return Ok(());
        }
        let now = Instant::now();
        while self
            .restarts
            .front()
            .is_some_and(|at| now.duration_since(*at) > policy.window)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= policy.max_restarts as usize {
            let message = format!(
                "{exit}; restarted {} times within {:?}, giving up (RestartAgent or StartAgent tries again)",
                self.restarts.len(),
                policy.window
            );
            self.record = self
                .ctx
                .store
                .set_status(self.id(), AgentStatus::Failed, &message, None)
                .await?;
            return Ok(());
        }
        self.restarts.push_back(now);
        let backoff = policy.backoff(self.restarts.len() as u32);
        self.backoff_until = Some(now + backoff);
        let message = format!("{exit}; restarting in {backoff:?}");
        self.record = self
            .ctx
            .store
            .set_status(self.id(), AgentStatus::Exited, &message, None)
            .await?;
        Ok(())
    }

    /// Stops the running process, if any, and records its exit.
    async fn terminate(&mut self, reason: &str) -> Result<()> {
        let Some(process) = self.process.take() else {
            return Ok(());
        };
        self.token_hash = None;
        self.close_reconnect_window();
        let exit = process.terminate(self.ctx.stop_grace).await;
        self.record_exit(exit, reason).await?;
        self.drop_session(reason).await
    }

    async fn record_exit(&mut self, exit: ExitInfo, message: &str) -> Result<()> {
        if exit.oom_killed {
            crate::metrics::agent_oom_killed(self.id(), &self.record.name);
        }
        self.record = self
            .ctx
            .store
            .record_exit(self.id(), message, exit.reason())
            .await?;
        self.append(Event::Exited {
            code: exit.code,
            signal: exit.signal,
            reason: exit.reason(),
        })
        .await?;
        Ok(())
    }

    async fn session_opened(
        &mut self,
        session: SessionHandle,
        token_hash: &[u8],
        held: Vec<HeldTask>,
    ) -> Result<OpenedSession> {
        // Only the running process's token is valid: every launch issues a
        // new one, so tokens of earlier generations are refused.
        let valid = self
            .token_hash
            .as_deref()
            .is_some_and(|current| constant_time_eq(current, token_hash));
        if !valid {
            return Err(Error::StaleSession(format!(
                "session token refused for agent {}: connect with the SHEPHERD_SESSION_TOKEN the manager gave this process; tokens of earlier generations are invalid",
                self.id()
            )));
        }
        self.accept_session(session, held).await
    }

    /// Installs an authenticated session, carrying over the tasks its
    /// process holds; the agent is READY.
    async fn accept_session(
        &mut self,
        mut session: SessionHandle,
        held: Vec<HeldTask>,
    ) -> Result<OpenedSession> {
        session.generation = self.record.generation;
        // Before the session is installed (so no dispatch races it): the
        // tasks the process holds move to it, the rest of its earlier
        // sessions' tasks are lost. Failing here refuses the session with
        // UNAVAILABLE; the agent tries again.
        let carried = self.carry_over(session.session_id, held).await?;
        self.close_reconnect_window();
        if let Some(previous) = self.ctx.sessions.install(self.id(), session) {
            // The newer session wins; the older one's loop ends and its
            // tasks are swept when it reports back.
            previous.cancel.cancel();
        }
        self.record = self
            .ctx
            .store
            .set_status(self.id(), AgentStatus::Ready, "", self.record.pid)
            .await?;
        self.append(Event::Ready).await?;
        Ok(OpenedSession {
            agent: self.record.clone(),
            carried,
        })
    }

    async fn carry_over(&self, session_id: Uuid, held: Vec<HeldTask>) -> Result<Vec<CarriedTask>> {
        let keys: Vec<(String, u32)> = held
            .iter()
            .map(|task| (task.task_id.clone(), task.attempt))
            .collect();
        let (moved, lost) = self
            .ctx
            .store
            .reattach_tasks(self.id(), self.record.generation, session_id, &keys)
            .await?;
        self.report_lost(lost, "the agent's process no longer holds it")
            .await?;
        let mut deadlines: std::collections::HashMap<String, Option<std::time::SystemTime>> = held
            .into_iter()
            .map(|task| (task.task_id, task.deadline))
            .collect();
        if !moved.is_empty() {
            tracing::info!(agent = %self.id(), tasks = moved.len(), "carried tasks over to the agent's new session");
        }
        Ok(moved
            .into_iter()
            .map(|task| CarriedTask {
                deadline: deadlines.remove(&task.task_id).flatten(),
                accepted: task.state == TaskState::Accepted,
                task_id: task.task_id,
                attempt: task.attempt,
            })
            .collect())
    }

    fn close_reconnect_window(&mut self) {
        if self.reconnect_until.take().is_some() {
            self.ctx.sessions.stop_expecting(self.id());
        }
    }

    async fn session_closed(&mut self, session_id: Uuid, reason: &str, wedged: bool) -> Result<()> {
        // Out of the registry first (in memory, cannot fail): a session
        // whose loop ended is never handed another task.
        let was_current = self
            .ctx
            .sessions
            .remove_if_current(self.id(), session_id)
            .is_some();
        // An external agent is not ours to watch: it may come back (or a
        // new instance may) as long as it should run.
        let may_return = self.process.is_some()
            || (self.external() && self.record.desired_state == DesiredState::Running);
        if !was_current || wedged || !may_return {
            // The loop has closed its task channel, so this sweep sees every
            // task it ever took.
            self.sweep(Some(session_id), reason).await;
        } else {
            // The process still runs and may come back naming the tasks it
            // holds; until then (or the window closes) they stay in flight.
            self.expect_reconnect();
        }
        if !was_current {
            return Ok(());
        }
        if wedged && self.process.is_some() {
            // A wedged agent cannot be trusted with more work: replace it
            // (through the one restart path, so the scheduler hears
            // AgentRestarted), unless its policy says never.
            tracing::warn!(agent = %self.id(), %reason, "agent wedged; replacing it");
            if self.record.spec.restart_policy.mode == RestartMode::Never {
                self.terminate(reason).await?;
            } else {
                self.restart(reason).await?;
            }
            return Ok(());
        }
        self.disconnected(reason).await
    }

    /// Ends the current session from this side (process gone).
    async fn drop_session(&mut self, reason: &str) -> Result<()> {
        let session = self.ctx.sessions.remove(self.id());
        if let Some(session) = &session {
            session.cancel.cancel();
        }
        // The process is gone: nothing of the agent's is in flight any more,
        // on this session or on one it was expected back from.
        self.sweep(None, reason).await;
        if session.is_some() {
            self.append(Event::Disconnected {
                reason: reason.to_owned(),
            })
            .await?;
        }
        Ok(())
    }

    /// Declares the tasks in flight on an ended session (`None`: on any of
    /// the agent's sessions) lost. If that cannot be stored now (the
    /// database is down) they stay recorded as in flight on a session that
    /// is not live, and the next `BatchGetTaskStates` about them (the
    /// scheduler's settle pass) declares them lost then.
    async fn sweep(&self, session_id: Option<Uuid>, reason: &str) {
        if shepherd_platform::failpoint::hit("manager.skip_session_sweep") {
            return;
        }
        let store = &self.ctx.store;
        let lost = match session_id {
            Some(session_id) => store.mark_session_tasks_lost(session_id).await,
            None => {
                store
                    .mark_agent_tasks_lost(self.id(), self.record.generation)
                    .await
            }
        };
        let swept = match lost {
            Ok(lost) => self.report_lost(lost, reason).await,
            Err(err) => Err(err),
        };
        if let Err(err) = swept {
            tracing::warn!(agent = %self.id(), ?session_id, error = %err, "could not declare the tasks lost; the scheduler's settle pass will");
        }
    }

    async fn disconnected(&mut self, reason: &str) -> Result<()> {
        let waiting = self.process.is_some()
            || (self.external() && self.record.desired_state == DesiredState::Running);
        if waiting {
            // The process still runs: it may reconnect with its token.
            self.record = self
                .ctx
                .store
                .set_status(self.id(), AgentStatus::Starting, reason, self.record.pid)
                .await?;
        }
        self.append(Event::Disconnected {
            reason: reason.to_owned(),
        })
        .await?;
        Ok(())
    }

    async fn report_lost(&self, lost: Vec<LostTask>, reason: &str) -> Result<()> {
        report_lost(&self.ctx.events, lost, reason).await
    }

    async fn set_desired(&mut self, desired: DesiredState) -> Result<()> {
        if self.record.desired_state != desired {
            self.record = self.ctx.store.set_desired_state(self.id(), desired).await?;
        }
        Ok(())
    }

    fn reset_restart_budget(&mut self) {
        self.backoff_until = None;
        self.restarts.clear();
    }

    async fn append(&self, event: Event) -> Result<u64> {
        self.ctx
            .events
            .append(self.id(), self.record.generation, event)
            .await
    }

    fn external(&self) -> bool {
        self.record.spec.runtime == Runtime::External
    }

    /// Asks the agent over its session to exit (external agents: their
    /// own supervisor decides what comes next). Its session stops taking
    /// tasks at once; its tasks are swept when it closes.
    fn ask_to_exit(&mut self, reason: &str) {
        if !self.external() {
            return;
        }
        if let Some(session) = self.ctx.sessions.remove(self.id()) {
            let exit = ToAgent::Exit {
                reason: reason.to_owned(),
            };
            if session.tasks.try_send(exit).is_err() {
                // Its queue is full or the loop is over: end it here.
                session.cancel.cancel();
            }
        }
    }

    /// A session of an external agent: its credential authenticates it; a
    /// new instance is a restart, the same instance reconnecting is not.
    async fn external_session_opened(
        &mut self,
        session: SessionHandle,
        token_hash: &[u8],
        held: Vec<HeldTask>,
        instance: String,
    ) -> Result<OpenedSession> {
        // Another node may have supervised it since this one last did.
        if let Some(fresh) = self.ctx.store.get_agent(self.id()).await? {
            self.record = fresh;
        }
        let stored = self.ctx.store.credential_hash(self.id()).await?;
        let valid = stored
            .as_deref()
            .is_some_and(|stored| constant_time_eq(stored, token_hash));
        if !valid {
            return Err(Error::StaleSession(format!(
                "credential refused for agent {}: connect with the SHEPHERD_AGENT_CREDENTIAL shown when it was created or last rotated",
                self.id()
            )));
        }
        if self.record.desired_state != DesiredState::Running {
            return Err(Error::FailedPrecondition(format!(
                "agent {} is stopped: StartAgent lets it connect again",
                self.id()
            )));
        }
        if instance.is_empty() || instance.len() > MAX_INSTANCE_ID {
            return Err(Error::invalid(
                "hello.instance_id",
                format!(
                    "an external agent names its instance in 1-{MAX_INSTANCE_ID} bytes (the SDK does)"
                ),
            ));
        }
        // Only a reconnect to the node that still supervises its instance
        // resumes it: a session that lands elsewhere replaces one whose
        // tasks nobody here can account for.
        let same_instance = self.record.instance.as_deref() == Some(instance.as_str())
            && self.record.node.as_deref() == Some(self.ctx.store.fence().name.as_str());
        let held = if same_instance {
            held
        } else {
            self.new_instance(&instance).await?;
            Vec::new()
        };
        self.accept_session(session, held).await
    }

    /// A new instance of an external agent: the next generation. What the
    /// old instance held is lost (it is gone, or no longer ours).
    async fn new_instance(&mut self, instance: &str) -> Result<()> {
        if let Some(previous) = self.ctx.sessions.remove(self.id()) {
            previous.cancel.cancel();
        }
        self.close_reconnect_window();
        self.sweep(None, "a new instance of the external agent connected")
            .await;
        self.record = self.ctx.store.record_instance(self.id(), instance).await?;
        let generation = self.record.generation;
        self.append(Event::Started { pid: 0 }).await?;
        if generation > 1 {
            crate::metrics::agent_restarted(self.id(), &self.record.name);
            self.append(Event::Restarted {
                generation,
                reason: "a new instance of the external agent connected".into(),
            })
            .await?;
        }
        tracing::info!(agent = %self.id(), generation, instance, "external agent instance connected");
        Ok(())
    }

    /// Manager start-up, external agent: it reconnects by itself; until it
    /// does (or its window closes) its tasks count as in flight.
    async fn reconcile_external(&mut self) -> Result<bool> {
        if self.record.desired_state != DesiredState::Running {
            return Ok(false);
        }
        self.expect_reconnect();
        self.record = self
            .ctx
            .store
            .set_status(
                self.id(),
                AgentStatus::Starting,
                "waiting for the external agent to reconnect",
                None,
            )
            .await?;
        Ok(true)
    }

    fn log_err(&self, what: &str, result: Result<()>) {
        if let Err(err) = result {
            tracing::error!(agent = %self.id(), error = %err, "{what} failed");
        }
    }
}

/// What a failed launch tried to start, for its message.
fn launch_target(spec: &crate::model::AgentSpec) -> String {
    match (&spec.runtime, &spec.image) {
        (Runtime::Kubernetes, Some(image)) => format!("a Pod of image {image:?}"),
        _ => format!("{:?}", spec.command),
    }
}

/// Appends a `TaskLost` event for each lost task.
pub(crate) async fn report_lost(
    events: &EventLog,
    lost: Vec<LostTask>,
    reason: &str,
) -> Result<()> {
    for task in lost {
        events
            .append(
                task.agent_id,
                task.generation,
                Event::TaskLost {
                    task_id: task.task_id,
                    reason: reason.to_owned(),
                    attempt: task.attempt,
                },
            )
            .await?;
    }
    Ok(())
}
