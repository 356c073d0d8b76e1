//! The agent's sessions as its supervisor sees them: admitting one (the
//! running process's token, or an external agent's credential), carrying
//! over the tasks its process holds, the reconnect window, and declaring
//! lost what an ended session leaves in flight.

use std::collections::HashMap;
use std::time::SystemTime;

use tokio::time::Instant;
use uuid::Uuid;

use shepherd_platform::auth::constant_time_eq;

use super::actor::Supervisor;
use super::decide::{Entry, Pid};
use super::launch::started_events;
use super::{MAX_INSTANCE_ID, OpenedSession};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::model::task::TaskState;
use crate::model::{AgentStatus, DesiredState};
use crate::protocol::{HeldTask, ToAgent};
use crate::sessions::{CarriedTask, SessionHandle};
use crate::store::{AgentChange, LostTask};

impl Supervisor {
    pub(super) async fn session_opened(
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
        self.set_status(AgentStatus::Ready, "", Pid::Keep, Some(Entry::Ready))
            .await?;
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
        let mut deadlines: HashMap<String, Option<SystemTime>> = held
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

    /// Opens the reconnect window of the running process.
    pub(super) fn expect_reconnect(&mut self) {
        let until = Instant::now() + self.ctx.reconnect_grace;
        self.reconnect_until = Some(until);
        self.ctx.sessions.expect_reconnect(self.id(), until);
    }

    pub(super) fn close_reconnect_window(&mut self) {
        if self.reconnect_until.take().is_some() {
            self.ctx.sessions.stop_expecting(self.id());
        }
    }

    /// Ends the current session from this side (process gone).
    pub(super) async fn drop_session(&mut self, reason: &str) -> Result<()> {
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
    pub(super) async fn sweep(&self, session_id: Option<Uuid>, reason: &str) {
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

    async fn report_lost(&self, lost: Vec<LostTask>, reason: &str) -> Result<()> {
        super::report_lost(&self.ctx.events, lost, reason).await
    }

    /// Asks an external agent over its session to exit (its own supervisor
    /// decides what comes next). Its session stops taking tasks at once;
    /// its tasks are swept when it closes.
    pub(super) fn ask_to_exit(&mut self, reason: &str) {
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
    pub(super) async fn external_session_opened(
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
            return Err(Error::failed_precondition(format!(
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
        let change = AgentChange::Instance {
            instance: instance.to_owned(),
        };
        self.commit(change, |agent| {
            let reason = "a new instance of the external agent connected";
            started_events(0, agent.generation, reason.into())
        })
        .await?;
        let generation = self.record.generation;
        if generation > 1 {
            crate::metrics::agent_restarted(self.id(), &self.record.name);
        }
        tracing::info!(agent = %self.id(), generation, instance, "external agent instance connected");
        Ok(())
    }
}
