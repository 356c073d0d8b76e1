//! The thin actor around `decide`: it waits for the next input (a command,
//! the process's exit, a timer), asks `decide` what to do, and carries the
//! effects out in order, stopping at the first that fails. What it owns
//! (the process, the session token, the timers, the restart budget) changes
//! only here, one input at a time.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use shepherd_platform::timer::sleep_until_some;

use super::decide::{self, Effect, Entry, Input, Pid, State};
use super::{Command, Context, runtime};
use crate::error::Result;
use crate::events::Event;
use crate::model::{AgentRecord, AgentStatus, DesiredState, ExitInfo, Runtime};
use crate::store::AgentChange;
use crate::workload::Workload;

/// Why the actor woke up.
enum Wake {
    Command(Option<Command>),
    Exited(ExitInfo),
    BackoffElapsed,
    /// The process did not come back on a new session in time.
    ReconnectWindowClosed,
}

pub(super) struct Supervisor {
    pub(super) ctx: Arc<Context>,
    /// The stored row as last written by this supervisor (it is the only
    /// writer of the observed columns, so the copy is current).
    pub(super) record: AgentRecord,
    pub(super) process: Option<Workload>,
    /// Hash of the running process's session token. Kept here, not read
    /// back from the database, so that a process that connects the instant
    /// it starts is checked against its own generation's token.
    pub(super) token_hash: Option<Vec<u8>>,
    backoff_until: Option<Instant>,
    /// While the running process is expected back on a new session: when
    /// its tasks stop counting as in flight.
    pub(super) reconnect_until: Option<Instant>,
    /// When automatic restarts happened, for the restart budget.
    restarts: VecDeque<Instant>,
    commands: mpsc::Receiver<Command>,
}

impl Supervisor {
    pub(super) fn new(
        ctx: Arc<Context>,
        record: AgentRecord,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        Self {
            ctx,
            record,
            process: None,
            token_hash: None,
            backoff_until: None,
            reconnect_until: None,
            restarts: VecDeque::new(),
            commands,
        }
    }

    pub(super) fn id(&self) -> Uuid {
        self.record.id
    }

    pub(super) fn external(&self) -> bool {
        self.record.spec.runtime == Runtime::External
    }

    /// What `decide` sees.
    fn state(&self) -> State<'_> {
        State {
            runtime: self.record.spec.runtime,
            desired: self.record.desired_state,
            status: self.record.status,
            has_pid: self.record.pid.is_some(),
            running: self.process.is_some(),
            connected: self.ctx.sessions.is_live(self.id()),
            policy: &self.record.spec.restart_policy,
            restarts: &self.restarts,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            let done = match self.next_wake().await {
                Wake::Command(Some(command)) => self.handle(command).await,
                // Every handle is gone: the manager is going away.
                Wake::Command(None) => {
                    self.shutdown().await;
                    true
                }
                Wake::Exited(exit) => {
                    tracing::info!(agent = %self.id(), %exit, "agent process exited");
                    let now = Instant::now();
                    let result = self.step(Input::Exited { exit, now }).await;
                    self.log_err("process exit", result);
                    false
                }
                Wake::BackoffElapsed => {
                    let result = self.step(Input::BackoffElapsed).await;
                    self.log_err("automatic restart", result);
                    false
                }
                Wake::ReconnectWindowClosed => {
                    let result = self.step(Input::ReconnectWindowClosed).await;
                    self.log_err("closing the reconnect window", result);
                    false
                }
            };
            if done {
                return;
            }
        }
    }

    async fn next_wake(&mut self) -> Wake {
        let Self {
            process,
            backoff_until,
            reconnect_until,
            commands,
            ..
        } = self;
        match (process, *backoff_until) {
            (Some(process), _) => tokio::select! {
                exit = process.wait() => Wake::Exited(exit),
                command = commands.recv() => Wake::Command(command),
                _ = sleep_until_some(*reconnect_until) => Wake::ReconnectWindowClosed,
            },
            (None, Some(at)) => tokio::select! {
                _ = tokio::time::sleep_until(at) => Wake::BackoffElapsed,
                command = commands.recv() => Wake::Command(command),
            },
            // An external agent has no process, but may have a window to
            // reconnect in.
            (None, None) => tokio::select! {
                command = commands.recv() => Wake::Command(command),
                _ = sleep_until_some(*reconnect_until) => Wake::ReconnectWindowClosed,
            },
        }
    }

    /// Handles one command; true when the supervisor is done.
    async fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Start(reply) => {
                let _ = reply.send(self.answer(Input::Start).await);
            }
            Command::Stop(reply) => {
                let _ = reply.send(self.answer(Input::Stop).await);
            }
            Command::Restart(reason, reply) => {
                let _ = reply.send(self.answer(Input::Restart { reason: &reason }).await);
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
                // Out of the registry first (in memory, cannot fail): a
                // session whose loop ended is never handed another task.
                let current = self
                    .ctx
                    .sessions
                    .remove_if_current(self.id(), session_id)
                    .is_some();
                if current && wedged && self.process.is_some() {
                    tracing::warn!(agent = %self.id(), %reason, "agent wedged; replacing it");
                }
                let input = Input::SessionClosed {
                    session_id,
                    current,
                    wedged,
                    reason: &reason,
                };
                let result = self.step(input).await;
                self.log_err("session close", result);
            }
            Command::Reconcile(reply) => {
                let result = self.reconcile().await;
                let adopted = matches!(result, Ok(true));
                self.log_err("start-up reconciliation", result.map(drop));
                let _ = reply.send(Ok(adopted));
            }
            Command::Delete(reply) => {
                let result = self.step(Input::Delete).await;
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

    /// Decides and carries out `input`; answers with the agent as it is
    /// then.
    async fn answer(&mut self, input: Input<'_>) -> Result<AgentRecord> {
        self.step(input).await?;
        Ok(self.record.clone())
    }

    /// Decides and carries out `input`, stopping at the first failed effect.
    pub(super) async fn step(&mut self, input: Input<'_>) -> Result<()> {
        let effects = decide::decide(&self.state(), input);
        for effect in effects {
            // Each effect's cost, for whoever profiles a path (a restart's
            // steps): RUST_LOG=shepherd_agent_manager::supervisor=debug.
            let started = std::time::Instant::now();
            let name = tracing::enabled!(tracing::Level::DEBUG).then(|| format!("{effect:?}"));
            self.apply(effect).await?;
            if let Some(name) = name {
                tracing::debug!(agent = %self.id(), effect = %name, micros = started.elapsed().as_micros() as u64, "effect applied");
            }
        }
        Ok(())
    }

    async fn apply(&mut self, effect: Effect) -> Result<()> {
        match effect {
            Effect::SetDesired(desired) => self.set_desired(desired).await?,
            Effect::CancelBackoff => self.backoff_until = None,
            Effect::ResetRestartBudget => {
                self.backoff_until = None;
                self.restarts.clear();
            }
            Effect::KeepRestarts(restarts) => self.restarts = restarts,
            Effect::BackoffUntil(at) => self.backoff_until = Some(at),
            Effect::AskToExit(reason) => self.ask_to_exit(&reason),
            Effect::Terminate(reason) => self.terminate(&reason).await?,
            Effect::ClearProcess => self.clear_process().await,
            Effect::RecordExit(exit) => self.record_exit(exit, &exit.to_string()).await?,
            Effect::DropSession(reason) => self.drop_session(&reason).await?,
            Effect::Launch(reason) => self.launch(&reason).await.map(drop)?,
            Effect::SetStatus {
                status,
                message,
                pid,
                event,
            } => self.set_status(status, &message, pid, event).await?,
            Effect::Append(entry) => self.append(entry.into()).await.map(drop)?,
            Effect::SweepSession(session_id, reason) => self.sweep(Some(session_id), &reason).await,
            Effect::SweepAgent(reason) => self.sweep(None, &reason).await,
            Effect::ExpectReconnect => self.expect_reconnect(),
            Effect::CloseReconnectWindow => self.close_reconnect_window(),
            Effect::LeaveRunning => {
                tracing::info!(agent = %self.id(), pid = self.record.pid, "leaving the agent running for the next manager");
            }
            Effect::DeleteRow => {
                self.commit(AgentChange::Delete, |_| vec![Event::Deleted])
                    .await?
            }
            Effect::RemoveLogs => self.ctx.logs.remove(self.id()).await,
            Effect::ClearLeftovers { started_at } => {
                runtime::of(self.record.spec.runtime)
                    .clear_leftovers(&self.ctx, &self.record, started_at)
                    .await;
            }
        }
        Ok(())
    }

    async fn set_desired(&mut self, desired: DesiredState) -> Result<()> {
        if self.record.desired_state != desired {
            self.record = self.ctx.store.set_desired_state(self.id(), desired).await?;
        }
        Ok(())
    }

    /// Stores the status, and `event` with it (one transaction).
    pub(super) async fn set_status(
        &mut self,
        status: AgentStatus,
        message: &str,
        pid: Pid,
        event: Option<Entry>,
    ) -> Result<()> {
        let change = AgentChange::Status {
            status,
            message: message.to_owned(),
            pid: match pid {
                Pid::Keep => self.record.pid,
                Pid::Clear => None,
            },
        };
        match event {
            Some(entry) => {
                let event = Event::from(entry);
                self.commit(change, move |_| vec![event.clone()]).await
            }
            None => {
                self.record = self.ctx.store.change(self.id(), &change).await?;
                Ok(())
            }
        }
    }

    /// Writes `change` of the agent's row and stores the events `events`
    /// makes of the agent as written, in one transaction: a crash or a lost
    /// fence leaves neither or both.
    pub(super) async fn commit(
        &mut self,
        change: AgentChange,
        events: impl Fn(&AgentRecord) -> Vec<Event> + Send + Sync + 'static,
    ) -> Result<()> {
        self.record = self
            .ctx
            .events
            .change(self.id(), change, Box::new(events))
            .await?;
        Ok(())
    }

    pub(super) async fn append(&self, event: Event) -> Result<u64> {
        self.ctx
            .events
            .append(self.id(), self.record.generation, event)
            .await
    }

    /// Manager shutdown: every effect is tried (each failure logged), since
    /// nothing after this would retry them.
    async fn shutdown(&mut self) {
        let input = Input::Shutdown {
            live_restore: self.ctx.live_restore,
        };
        for effect in decide::decide(&self.state(), input) {
            let result = self.apply(effect).await;
            self.log_err("shutdown", result);
        }
    }

    /// Manager start-up: no process of ours runs. A process a previous
    /// manager left running is adopted if `decide::adopts` and it proves to
    /// be the recorded one (answers true, as for an external agent that is
    /// expected back); otherwise the agent is brought to its desired state.
    async fn reconcile(&mut self) -> Result<bool> {
        let orphan_started_at = if self.record.spec.runtime == Runtime::Process {
            // Read once: what adoption takes over, and what an orphan kill
            // checks the pid against.
            let launched = self.ctx.store.launched_process(self.id()).await?;
            let started_at = launched.as_ref().map(|l| l.identity.started_at);
            if decide::adopts(&self.state(), self.ctx.live_restore) && self.adopt(launched).await? {
                return Ok(true);
            }
            started_at
        } else {
            None
        };
        let waits = decide::awaits_reconnect(&self.state());
        self.step(Input::Reconcile { orphan_started_at }).await?;
        Ok(waits)
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
        let stored_lost = stored.status == AgentStatus::Lost;
        self.step(Input::LeaseRegained { stored_lost }).await
    }

    pub(super) fn log_err(&self, what: &str, result: Result<()>) {
        if let Err(err) = result {
            tracing::error!(agent = %self.id(), error = %err, "{what} failed");
        }
    }
}

impl From<Entry> for Event {
    fn from(entry: Entry) -> Self {
        match entry {
            Entry::Ready => Event::Ready,
            Entry::Stopped => Event::Stopped,
            Entry::Disconnected { reason } => Event::Disconnected { reason },
        }
    }
}
