//! Live agent sessions: the registry that dispatch reads, and the loop that
//! runs one session (heartbeats both ways, task reports, disconnect
//! detection).
//!
//! Ownership: only an agent's supervisor installs or removes its entry, so
//! "which session is current" changes in one place, in order with the
//! agent's other state changes. A session loop never touches the registry;
//! when it ends it tells the supervisor (`SessionClosed`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use shepherd_proto::agentmanager::v1::{
    AgentMessage, ManagerHeartbeat, ManagerMessage, TaskCompleted, agent_event, agent_message,
    manager_message,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::EventLog;
use crate::store::Store;

/// Largest task output kept in a `TaskCompleted` event.
const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// What dispatch needs to deliver to a live session.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    pub session_id: Uuid,
    pub generation: u64,
    /// Tasks to forward to the agent. Closed once the session loop ended, so
    /// a send that succeeds was taken before the session's tasks were
    /// declared lost.
    pub tasks: mpsc::Sender<ManagerMessage>,
    /// Cancelling it ends the session loop.
    pub cancel: CancellationToken,
    /// Tasks the agent accepted on this session and has not completed.
    pub accepted: AcceptedTasks,
}

/// Tasks accepted on a session and not yet completed. Acceptance changes
/// no stored state (it is an event); the session loop keeps this set so
/// that a repeated dispatch can report the task as accepted.
#[derive(Clone, Debug, Default)]
pub struct AcceptedTasks(Arc<Mutex<HashSet<String>>>);

impl AcceptedTasks {
    pub fn contains(&self, task_id: &str) -> bool {
        self.lock().contains(task_id)
    }

    fn insert(&self, task_id: &str) {
        self.lock().insert(task_id.to_owned());
    }

    fn remove(&self, task_id: &str) {
        self.lock().remove(task_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A set of ids holds no invariant a panicking holder could break.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The current session of each agent.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<Uuid, SessionHandle>>>,
}

impl Sessions {
    pub fn get(&self, agent: Uuid) -> Option<SessionHandle> {
        self.lock().get(&agent).cloned()
    }

    /// Makes `session` current; returns the one it replaced.
    pub fn install(&self, agent: Uuid, session: SessionHandle) -> Option<SessionHandle> {
        self.lock().insert(agent, session)
    }

    /// Removes the agent's session if it is `session_id`.
    pub fn remove_if_current(&self, agent: Uuid, session_id: Uuid) -> Option<SessionHandle> {
        let mut sessions = self.lock();
        match sessions.get(&agent) {
            Some(current) if current.session_id == session_id => sessions.remove(&agent),
            _ => None,
        }
    }

    pub fn remove(&self, agent: Uuid) -> Option<SessionHandle> {
        self.lock().remove(&agent)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, SessionHandle>> {
        // The map holds no invariant a panicking holder could break halfway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything one session loop needs.
pub struct SessionLoop<S> {
    pub agent_id: Uuid,
    pub handle: SessionHandle,
    pub inbound: S,
    pub tasks: mpsc::Receiver<ManagerMessage>,
    pub outbound: mpsc::Sender<ManagerMessage>,
    pub heartbeat_interval: Duration,
    pub store: Store,
    pub events: EventLog,
}

impl<S> SessionLoop<S>
where
    S: Stream<Item = Result<AgentMessage, tonic::Status>> + Unpin,
{
    /// Runs until the agent goes away, goes silent, or the session is
    /// cancelled. Returns why it ended. The task channel is closed before
    /// returning, so every task that made it in is covered by the
    /// supervisor's lost-task sweep that follows.
    pub async fn run(self) -> String {
        let Self {
            agent_id,
            handle,
            mut inbound,
            mut tasks,
            outbound,
            heartbeat_interval,
            store,
            events,
        } = self;
        let reports = TaskReports {
            agent_id,
            session_id: handle.session_id,
            generation: handle.generation,
            accepted: handle.accepted.clone(),
            store,
            events,
        };
        let session = Session {
            cancel: &handle.cancel,
            inbound: &mut inbound,
            tasks: &mut tasks,
            outbound: &outbound,
            heartbeat_interval,
            reports: &reports,
        };
        let reason = session.serve().await;
        tasks.close();
        reason
    }
}

/// The running session, borrowed apart so that the (non-`Sync`) inbound
/// stream is never shared across an await.
struct Session<'a, S> {
    cancel: &'a CancellationToken,
    inbound: &'a mut S,
    tasks: &'a mut mpsc::Receiver<ManagerMessage>,
    outbound: &'a mpsc::Sender<ManagerMessage>,
    heartbeat_interval: Duration,
    reports: &'a TaskReports,
}

impl<S> Session<'_, S>
where
    S: Stream<Item = Result<AgentMessage, tonic::Status>> + Unpin,
{
    async fn serve(self) -> String {
        // The agent heartbeats every interval; three missed ones mean it is
        // gone even if the connection still looks open.
        let silence_limit = self.heartbeat_interval * 3;
        let mut silent_until = Instant::now() + silence_limit;
        let mut ticker = tokio::time::interval(self.heartbeat_interval);
        // Tasks forwarded on this session and not yet completed: reports
        // about anything else are stale and ignored without a query.
        let mut in_flight = HashSet::new();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return "session closed by the manager".into(),
                message = self.inbound.next() => match message {
                    Some(Ok(message)) => {
                        silent_until = Instant::now() + silence_limit;
                        self.reports.on_message(message, &mut in_flight).await;
                    }
                    Some(Err(status)) => return format!("session stream failed: {}", status.message()),
                    None => return "agent closed the session".into(),
                },
                Some(task) = self.tasks.recv() => {
                    if let Some(manager_message::Kind::Task(task)) = &task.kind {
                        in_flight.insert(task.task_id.clone());
                    }
                    if self.outbound.send(task).await.is_err() {
                        return "agent went away".into();
                    }
                }
                _ = ticker.tick() => {
                    let beat = ManagerMessage {
                        kind: Some(manager_message::Kind::Heartbeat(ManagerHeartbeat {})),
                    };
                    if self.outbound.send(beat).await.is_err() {
                        return "agent went away".into();
                    }
                }
                _ = tokio::time::sleep_until(silent_until) => {
                    return format!("no heartbeat from the agent for {silence_limit:?}");
                }
            }
        }
    }
}

/// Records what the agent reports about its tasks.
struct TaskReports {
    agent_id: Uuid,
    session_id: Uuid,
    generation: u64,
    accepted: AcceptedTasks,
    store: Store,
    events: EventLog,
}

impl TaskReports {
    async fn on_message(&self, message: AgentMessage, in_flight: &mut HashSet<String>) {
        let result = match message.kind {
            Some(agent_message::Kind::TaskAccepted(accepted)) => {
                if in_flight.contains(&accepted.task_id) {
                    self.accepted.insert(&accepted.task_id);
                    self.accepted(accepted.task_id).await
                } else {
                    Ok(())
                }
            }
            Some(agent_message::Kind::TaskCompleted(completed)) => {
                if in_flight.remove(&completed.task_id) {
                    self.accepted.remove(&completed.task_id);
                    self.completed(completed).await
                } else {
                    Ok(())
                }
            }
            Some(agent_message::Kind::Heartbeat(_))
            | Some(agent_message::Kind::Hello(_))
            | None => Ok(()),
        };
        if let Err(err) = result {
            tracing::warn!(agent = %self.agent_id, error = %err, "could not record a task report");
        }
    }

    /// Acceptance is informational: no state changes, so it is only
    /// logged as an event, queued (in order) without waiting for the commit.
    async fn accepted(&self, task_id: String) -> crate::error::Result<()> {
        let kind =
            agent_event::Kind::TaskAccepted(shepherd_proto::agentmanager::v1::TaskAccepted {
                task_id,
            });
        self.events
            .enqueue(self.agent_id, self.generation, kind)
            .await
    }

    async fn completed(&self, mut completed: TaskCompleted) -> crate::error::Result<()> {
        let succeeded =
            completed.outcome() == shepherd_proto::agentmanager::v1::TaskOutcome::Succeeded;
        // An outcome is attributed by task id *and* session: a report for a
        // task this session does not hold (already lost, or unknown) is
        // dropped rather than overwriting a newer attempt.
        if let Some(attempt) = self
            .store
            .mark_task_completed(&completed.task_id, self.session_id, succeeded)
            .await?
        {
            completed.attempt = attempt;
            truncate_utf8(&mut completed.output, MAX_OUTPUT_BYTES);
            // The state is committed; the event follows in order. Not
            // waiting for its commit keeps this session taking reports.
            self.events
                .enqueue(
                    self.agent_id,
                    self.generation,
                    agent_event::Kind::TaskCompleted(completed),
                )
                .await?;
        }
        Ok(())
    }
}

fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// The hex SHA-256 of a session token: only this is stored.
pub fn hash_token(token: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

/// A fresh random session token (256 bits, hex).
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        let mut text = "aé".repeat(10);
        truncate_utf8(&mut text, 4);
        assert_eq!(text, "aéa");
    }

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
