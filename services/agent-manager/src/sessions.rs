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
    AgentMessage, ManagerHeartbeat, ManagerMessage, ReportAck, TaskCompleted, TaskOutcome,
    agent_event, agent_message, manager_message,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::EventLog;
use crate::store::{Completion, Store};

/// Largest task output kept (in the task row and its `TaskCompleted` event).
const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Reports waiting to be recorded, per session. The session loop only
/// waits when this many are queued behind a database outage.
const REPORT_QUEUE: usize = 4096;
/// Longest pause between two tries to record a report.
const MAX_RECORD_BACKOFF: Duration = Duration::from_secs(2);

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
        let (completions, pending) = mpsc::channel(REPORT_QUEUE);
        let recorder = Recorder {
            agent_id,
            generation: handle.generation,
            store,
            events: events.clone(),
            outbound: outbound.clone(),
            cancel: handle.cancel.clone(),
        };
        let recording = tokio::spawn(recorder.run(pending));
        let reports = TaskReports {
            agent_id,
            session_id: handle.session_id,
            generation: handle.generation,
            accepted: handle.accepted.clone(),
            events,
            completions,
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
        // Reports still queued are not acknowledged: the agent sends them
        // again on its next session.
        recording.abort();
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
        // Tasks forwarded on this session and not yet completed: an
        // acceptance of anything else is stale and ignored.
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

/// Takes what the agent reports about its tasks.
struct TaskReports {
    agent_id: Uuid,
    session_id: Uuid,
    generation: u64,
    accepted: AcceptedTasks,
    events: EventLog,
    /// Completions to record (by the session's `Recorder`).
    completions: mpsc::Sender<Completion>,
}

impl TaskReports {
    async fn on_message(&self, message: AgentMessage, in_flight: &mut HashSet<String>) {
        match message.kind {
            Some(agent_message::Kind::TaskAccepted(accepted)) => {
                if in_flight.contains(&accepted.task_id) {
                    self.accepted.insert(&accepted.task_id);
                    if let Err(err) = self.accepted(accepted.task_id).await {
                        tracing::warn!(agent = %self.agent_id, error = %err, "could not log a task acceptance");
                    }
                }
            }
            Some(agent_message::Kind::TaskCompleted(completed)) => {
                // Not only tasks forwarded on this session: an agent sends
                // the reports the manager has not acknowledged again on
                // every new session, and they are recorded by attempt.
                in_flight.remove(&completed.task_id);
                self.accepted.remove(&completed.task_id);
                let succeeded = completed.outcome() == TaskOutcome::Succeeded;
                let mut output = completed.output;
                truncate_utf8(&mut output, MAX_OUTPUT_BYTES);
                let completion = Completion {
                    succeeded,
                    task_id: completed.task_id,
                    agent_id: self.agent_id,
                    session_id: self.session_id,
                    attempt: completed.attempt,
                    output,
                };
                // Fails only once the session is over; the agent then sends
                // the report again on its next session.
                let _ = self.completions.send(completion).await;
            }
            Some(agent_message::Kind::Heartbeat(_))
            | Some(agent_message::Kind::Hello(_))
            | None => {}
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
}

/// Records a session's task reports durably, then acknowledges each to the
/// agent. A failed write is retried with backoff for as long as the session
/// lasts, never dropped; a report the session ends before recording is
/// sent again by the agent on its next session (it keeps every report until
/// acknowledged).
struct Recorder {
    agent_id: Uuid,
    generation: u64,
    store: Store,
    events: EventLog,
    outbound: mpsc::Sender<ManagerMessage>,
    cancel: CancellationToken,
}

impl Recorder {
    async fn run(self, mut pending: mpsc::Receiver<Completion>) {
        let mut batch = Vec::new();
        // Everything queued is recorded together (one batched statement).
        while pending.recv_many(&mut batch, 256).await > 0 {
            let recorded = batch.drain(..).map(|completion| self.record(completion));
            futures_util::future::join_all(recorded).await;
        }
    }

    async fn record(&self, completion: Completion) {
        if shepherd_platform::failpoint::hit("manager.before_report_recorded") {
            return;
        }
        let reported_attempt = completion.attempt;
        let task_id = completion.task_id.clone();
        let mut backoff = Duration::from_millis(50);
        let recorded = loop {
            match self.store.mark_task_completed(completion.clone()).await {
                Ok(recorded) => break recorded,
                Err(err) => {
                    tracing::warn!(agent = %self.agent_id, task = %task_id, error = %err, retry_in = ?backoff, "could not record a task report yet");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_RECORD_BACKOFF);
                }
            }
        };
        // A report that completed nothing is stale (an attempt superseded
        // or already recorded): acknowledged all the same, so the agent
        // forgets it.
        if let Some(attempt) = recorded {
            let event = TaskCompleted {
                task_id: task_id.clone(),
                outcome: if completion.succeeded {
                    TaskOutcome::Succeeded
                } else {
                    TaskOutcome::Failed
                } as i32,
                output: completion.output,
                attempt,
            };
            // The state is committed; the event follows in order (the log
            // retries its writes until stored).
            if let Err(err) = self
                .events
                .enqueue(
                    self.agent_id,
                    self.generation,
                    agent_event::Kind::TaskCompleted(event),
                )
                .await
            {
                tracing::warn!(agent = %self.agent_id, error = %err, "could not log a task completion");
            }
        }
        let ack = ManagerMessage {
            kind: Some(manager_message::Kind::ReportAck(ReportAck {
                task_id,
                attempt: reported_attempt,
            })),
        };
        let _ = self.outbound.send(ack).await;
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
