//! One supervisor per agent: an actor that owns the agent's process, its
//! observed state and its current session. Every change to those goes
//! through its mailbox, so they change in one order, one at a time: no
//! check-then-act races between an API call, a process exit and a session.
//!
//! The parts: this module is the registry of supervisors and their
//! mailboxes; `decide` is the state machine, a pure function from what the
//! supervisor knows and what happened to the steps to take; `actor` runs
//! the loop and carries those steps out; `launch` starts and ends
//! generations through the agent's `runtime` (process, Pod or external,
//! behind one trait); `session` admits and ends the agent's sessions.
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::containment::Containment;
use crate::error::{Error, Result};
use crate::events::{Event, EventLog};
use crate::kubernetes::Kubernetes;
use crate::logs::LogDir;
use crate::model::AgentRecord;
use crate::protocol::HeldTask;
use crate::sessions::{CarriedTask, SessionHandle, Sessions};
use crate::store::{LostTask, Store};

mod actor;
mod decide;
mod launch;
mod runtime;
mod session;

use actor::Supervisor;

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

pub(crate) use crate::model::MAX_INSTANCE_ID;

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
        let task = tokio::spawn(Supervisor::new(self.ctx.clone(), record, commands).run());
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
