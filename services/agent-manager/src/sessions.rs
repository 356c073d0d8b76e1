//! Live agent sessions: the registry that dispatch reads, and the loop that
//! runs one session (heartbeats both ways, task reports, disconnect
//! detection).
//!
//! Ownership: only an agent's supervisor installs or removes its entry, so
//! "which session is current" changes in one place, in order with the
//! agent's other state changes. A session loop never touches the registry;
//! when it ends it tells the supervisor (`SessionClosed`).

use shepherd_platform::timer::sleep_until_some;
use std::collections::{HashMap, HashSet};

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::approvals::Approvals;
use crate::events::{Event, EventLog};
use crate::model::approval::{ApprovalAsk, refusal};
use crate::model::task::TaskOutcome;
use crate::protocol::{FromAgent, ToAgent};
use crate::rate::{PROGRESS_BURST, PROGRESS_PER_SECOND, TokenBucket};
use crate::store::Completion;

/// Largest task output kept (in the task row and its `TaskCompleted` event).
pub(crate) const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Largest progress message, and output chunk, of a `TaskProgress`.
pub(crate) const MAX_PROGRESS_MESSAGE_BYTES: usize = 1024;
pub(crate) const MAX_PROGRESS_OUTPUT_BYTES: usize = 16 * 1024;
/// Reports waiting to be recorded, per session. The session loop only
/// waits when this many are queued behind a database outage.
const REPORT_QUEUE: usize = 4096;
/// Approval requests of one session being stored at once; more are
/// dropped (the agent sends them again).
const APPROVALS_IN_PROGRESS: usize = 8;

/// What dispatch needs to deliver to a live session.
#[derive(Clone, Debug)]
pub(crate) struct SessionHandle {
    pub session_id: Uuid,
    pub generation: u64,
    /// Tasks to forward to the agent. Closed once the session loop ended, so
    /// a send that succeeds was taken before the session's tasks were
    /// declared lost.
    pub tasks: mpsc::Sender<ToAgent>,
    /// Cancelling it ends the session loop.
    pub cancel: CancellationToken,
    /// Tasks the agent accepted on this session and has not completed.
    pub accepted: AcceptedTasks,
}

/// Tasks accepted on a session and not yet completed. Acceptance changes
/// no stored state (it is an event); the session loop keeps this set so
/// that a repeated dispatch can report the task as accepted.
#[derive(Clone, Debug, Default)]
pub(crate) struct AcceptedTasks(Arc<Mutex<HashSet<String>>>);

impl AcceptedTasks {
    pub(crate) fn contains(&self, task_id: &str) -> bool {
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

/// The current session of each agent, and the agents whose process is
/// expected to reconnect (its session dropped, or the manager restarted and
/// adopted it): their tasks stay in flight until it does or the window
/// closes.
#[derive(Clone, Default)]
pub(crate) struct Sessions {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    live: HashMap<Uuid, SessionHandle>,
    reconnecting: HashMap<Uuid, Instant>,
}

impl Sessions {
    pub(crate) fn get(&self, agent: Uuid) -> Option<SessionHandle> {
        self.lock().live.get(&agent).cloned()
    }

    /// Makes `session` current; returns the one it replaced.
    pub(crate) fn install(&self, agent: Uuid, session: SessionHandle) -> Option<SessionHandle> {
        let mut registry = self.lock();
        registry.reconnecting.remove(&agent);
        registry.live.insert(agent, session)
    }

    /// Removes the agent's session if it is `session_id`.
    pub(crate) fn remove_if_current(&self, agent: Uuid, session_id: Uuid) -> Option<SessionHandle> {
        let mut registry = self.lock();
        match registry.live.get(&agent) {
            Some(current) if current.session_id == session_id => registry.live.remove(&agent),
            _ => None,
        }
    }

    pub(crate) fn remove(&self, agent: Uuid) -> Option<SessionHandle> {
        self.lock().live.remove(&agent)
    }

    /// The agent's process is expected back on a new session until `until`.
    pub(crate) fn expect_reconnect(&self, agent: Uuid, until: Instant) {
        self.lock().reconnecting.insert(agent, until);
    }

    pub(crate) fn stop_expecting(&self, agent: Uuid) {
        self.lock().reconnecting.remove(&agent);
    }

    /// Whether the agent's process may still come back with the tasks it
    /// holds (so they are in flight, not lost).
    pub(crate) fn reconnecting(&self, agent: Uuid) -> bool {
        self.lock()
            .reconnecting
            .get(&agent)
            .is_some_and(|until| *until > Instant::now())
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().live.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The map holds no invariant a panicking holder could break halfway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything one session loop needs.
pub(crate) struct SessionLoop<S> {
    pub agent_id: Uuid,
    pub handle: SessionHandle,
    pub inbound: S,
    pub tasks: mpsc::Receiver<ToAgent>,
    pub outbound: mpsc::Sender<ToAgent>,
    pub heartbeat_interval: Duration,
    /// How long an agent has to report a task after it was told to stop
    /// it before its session counts as wedged.
    pub cancel_grace: Duration,
    pub events: EventLog,
    pub approvals: Approvals,
    /// Tasks carried over from the process's earlier sessions.
    pub carried: Vec<CarriedTask>,
}

/// A task in flight on an earlier session of the same process, carried
/// over to this one (`Store::reattach_tasks`).
#[derive(Debug, Clone)]
pub(crate) struct CarriedTask {
    pub task_id: String,
    pub attempt: u32,
    /// The deadline the agent was given, as it reports it.
    pub deadline: Option<std::time::SystemTime>,
    pub accepted: bool,
}

/// How a session ended.
#[derive(Debug)]
pub(crate) struct SessionEnd {
    pub reason: String,
    /// The agent ignored a Cancel past the grace period: restart it.
    pub wedged: bool,
}

impl SessionEnd {
    fn gone(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            wedged: false,
        }
    }
}

impl<S> SessionLoop<S>
where
    S: Stream<Item = Result<FromAgent, String>> + Unpin,
{
    /// Runs until the agent goes away, goes silent, or the session is
    /// cancelled. Returns why it ended. The task channel is closed before
    /// returning, so every task that made it in is covered by the
    /// supervisor's lost-task sweep that follows.
    pub(crate) async fn run(self) -> SessionEnd {
        let Self {
            agent_id,
            handle,
            mut inbound,
            mut tasks,
            outbound,
            heartbeat_interval,
            cancel_grace,
            events,
            approvals,
            carried,
        } = self;
        let mut in_flight = InFlightTasks::default();
        for task in carried {
            // The workflow of a carried task is not known here: its
            // approvals name none.
            in_flight.delivered(&task.task_id, task.attempt, task.deadline, "");
            if task.accepted {
                handle.accepted.insert(&task.task_id);
            }
        }
        let (completions, pending) = mpsc::channel(REPORT_QUEUE);
        let recorder = Recorder {
            agent_id,
            generation: handle.generation,
            events: events.clone(),
            outbound: outbound.clone(),
            cancel: handle.cancel.clone(),
        };
        // The recorder outlives the session: a report it is storing when the
        // session ends is still stored and its event still logged (aborting
        // it between the two would leave a completed task whose completion
        // nobody hears of). It stops once the queue is drained.
        tokio::spawn(recorder.run(pending));
        let reports = TaskReports {
            agent_id,
            session_id: handle.session_id,
            generation: handle.generation,
            accepted: handle.accepted.clone(),
            events,
            completions,
            approvals,
            approvals_in_progress: Arc::new(tokio::sync::Semaphore::new(APPROVALS_IN_PROGRESS)),
            outbound: outbound.clone(),
            progress_budget: Mutex::new(TokenBucket::new(
                PROGRESS_PER_SECOND,
                PROGRESS_BURST,
                std::time::Instant::now(),
            )),
        };
        let session = Session {
            cancel: &handle.cancel,
            inbound: &mut inbound,
            tasks: &mut tasks,
            outbound: &outbound,
            heartbeat_interval,
            cancel_grace,
            reports: &reports,
        };
        let reason = session.serve(in_flight).await;
        tasks.close();
        reason
    }
}

/// The running session, borrowed apart so that the (non-`Sync`) inbound
/// stream is never shared across an await.
struct Session<'a, S> {
    cancel: &'a CancellationToken,
    inbound: &'a mut S,
    tasks: &'a mut mpsc::Receiver<ToAgent>,
    outbound: &'a mpsc::Sender<ToAgent>,
    heartbeat_interval: Duration,
    cancel_grace: Duration,
    reports: &'a TaskReports,
}

impl<S> Session<'_, S>
where
    S: Stream<Item = Result<FromAgent, String>> + Unpin,
{
    async fn serve(self, mut in_flight: InFlightTasks) -> SessionEnd {
        // The agent heartbeats every interval; three missed ones mean it is
        // gone even if the connection still looks open.
        let silence_limit = self.heartbeat_interval * 3;
        let mut silent_until = Instant::now() + silence_limit;
        let mut ticker = tokio::time::interval(self.heartbeat_interval);
        loop {
            let timer = in_flight.next_timer();
            tokio::select! {
                _ = self.cancel.cancelled() => return SessionEnd::gone("session closed by the manager"),
                message = self.inbound.next() => match message {
                    Some(Ok(message)) => {
                        silent_until = Instant::now() + silence_limit;
                        self.reports.on_message(message, &mut in_flight).await;
                    }
                    Some(Err(reason)) => return SessionEnd::gone(format!("session stream failed: {reason}")),
                    None => return SessionEnd::gone("agent closed the session"),
                },
                Some(message) = self.tasks.recv() => {
                    let forward = match &message {
                        ToAgent::Task(task) => {
                            in_flight.delivered(&task.task_id, task.attempt, task.deadline, &task.workflow_id);
                            true
                        }
                        // A cancel of a task this session does not run
                        // has nothing to stop.
                        ToAgent::Cancel { task_id, .. } => {
                            in_flight.stop(task_id, TaskOutcome::Cancelled, Instant::now() + self.cancel_grace)
                        }
                        _ => true,
                    };
                    if forward && self.outbound.send(message).await.is_err() {
                        return SessionEnd::gone("agent went away");
                    }
                }
                _ = ticker.tick() => {
                    if self.outbound.send(ToAgent::Heartbeat).await.is_err() {
                        return SessionEnd::gone("agent went away");
                    }
                }
                _ = sleep_until_some(timer) => {
                    let timers = Timers {
                        outbound: self.outbound,
                        reports: self.reports,
                        cancel_grace: self.cancel_grace,
                    };
                    if let Some(end) = timers.fire(&mut in_flight).await {
                        return end;
                    }
                }
                _ = tokio::time::sleep_until(silent_until) => {
                    return SessionEnd::gone(format!("no heartbeat from the agent for {silence_limit:?}"));
                }
            }
        }
    }
}

/// What the session's task timers need (apart from the inbound stream,
/// which is not `Sync` and must not be borrowed across an await).
struct Timers<'a> {
    outbound: &'a mpsc::Sender<ToAgent>,
    reports: &'a TaskReports,
    cancel_grace: Duration,
}

impl Timers<'_> {
    /// Tells the agent to stop tasks past their deadline; a task still not
    /// reported a grace period after that ends the session as wedged, with
    /// the task recorded as timed out (or cancelled).
    async fn fire(&self, in_flight: &mut InFlightTasks) -> Option<SessionEnd> {
        let now = Instant::now();
        for (task_id, attempt) in in_flight.past_deadline(now, now + self.cancel_grace) {
            tracing::info!(agent = %self.reports.agent_id, task = %task_id, attempt, "task timed out; cancelling it");
            let cancel = ToAgent::Cancel {
                task_id,
                attempt,
                reason: "the task's timeout passed".into(),
            };
            if self.outbound.send(cancel).await.is_err() {
                return Some(SessionEnd::gone("agent went away"));
            }
        }
        let (task_id, attempt, outcome) = in_flight.past_grace(now)?;
        let completion = Completion {
            task_id: task_id.clone(),
            agent_id: self.reports.agent_id,
            session_id: self.reports.session_id,
            attempt,
            outcome,
            output: format!(
                "the agent did not stop the task within {:?} of being told to",
                self.cancel_grace
            ),
        };
        if let Err(err) = self.reports.record_now(completion).await {
            tracing::warn!(agent = %self.reports.agent_id, task = %task_id, error = %err, "could not record a timed-out task; it will be retried as lost");
        }
        Some(SessionEnd {
            reason: format!(
                "the agent ignored the cancellation of task {task_id} for {:?}",
                self.cancel_grace
            ),
            wedged: true,
        })
    }
}

/// Tasks forwarded on a session and not yet reported, with their
/// deadlines and any stop the agent was asked for.
#[derive(Default)]
struct InFlightTasks {
    tasks: HashMap<String, Tracked>,
}

struct Tracked {
    attempt: u32,
    /// The workflow its dispatcher named (empty: none or unknown).
    workflow_id: String,
    deadline: Option<Instant>,
    /// Asked to stop: why, and until when it may take to report.
    stop: Option<(TaskOutcome, Instant)>,
}

impl InFlightTasks {
    fn delivered(
        &mut self,
        task_id: &str,
        attempt: u32,
        deadline: Option<std::time::SystemTime>,
        workflow_id: &str,
    ) {
        let deadline = deadline.and_then(|at| {
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            Instant::now().checked_add(left)
        });
        self.tasks.insert(
            task_id.to_owned(),
            Tracked {
                attempt,
                workflow_id: workflow_id.to_owned(),
                deadline,
                stop: None,
            },
        );
    }

    fn contains(&self, task_id: &str) -> bool {
        self.tasks.contains_key(task_id)
    }

    /// The workflow of `attempt` of the task, if this session runs that
    /// attempt.
    fn workflow_of(&self, task_id: &str, attempt: u32) -> Option<&str> {
        self.tasks
            .get(task_id)
            .filter(|tracked| tracked.attempt == attempt)
            .map(|tracked| tracked.workflow_id.as_str())
    }

    /// Marks a task asked to stop (the first reason wins); false if this
    /// session does not run it.
    fn stop(&mut self, task_id: &str, outcome: TaskOutcome, grace_until: Instant) -> bool {
        match self.tasks.get_mut(task_id) {
            Some(tracked) => {
                tracked.stop.get_or_insert((outcome, grace_until));
                true
            }
            None => false,
        }
    }

    /// Forgets a reported task; returns the outcome it must be recorded
    /// with if the agent was asked to stop it.
    fn reported(&mut self, task_id: &str) -> Option<TaskOutcome> {
        self.tasks
            .remove(task_id)
            .and_then(|tracked| tracked.stop.map(|(outcome, _)| outcome))
    }

    fn next_timer(&self) -> Option<Instant> {
        self.tasks
            .values()
            .filter_map(|tracked| match tracked.stop {
                Some((_, grace_until)) => Some(grace_until),
                None => tracked.deadline,
            })
            .min()
    }

    /// The tasks whose deadline passed and that were not told to stop yet;
    /// they are marked as told now.
    fn past_deadline(&mut self, now: Instant, grace_until: Instant) -> Vec<(String, u32)> {
        let mut due = Vec::new();
        for (task_id, tracked) in &mut self.tasks {
            if tracked.stop.is_none() && tracked.deadline.is_some_and(|at| at <= now) {
                tracked.stop = Some((TaskOutcome::TimedOut, grace_until));
                due.push((task_id.clone(), tracked.attempt));
            }
        }
        due
    }

    /// A task told to stop that has not reported within its grace.
    fn past_grace(&self, now: Instant) -> Option<(String, u32, TaskOutcome)> {
        self.tasks
            .iter()
            .find_map(|(task_id, tracked)| match tracked.stop {
                Some((outcome, until)) if until <= now => {
                    Some((task_id.clone(), tracked.attempt, outcome))
                }
                _ => None,
            })
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
    approvals: Approvals,
    approvals_in_progress: Arc<tokio::sync::Semaphore>,
    outbound: mpsc::Sender<ToAgent>,
    /// Progress this session may still log (the rest is dropped).
    progress_budget: Mutex<TokenBucket>,
}

impl TaskReports {
    /// Records a completion the manager decided on itself (with its event,
    /// in one transaction), before the session ends (so the sweep that
    /// follows does not call it lost).
    async fn record_now(&self, completion: Completion) -> crate::error::Result<()> {
        self.events
            .record_report(self.generation, completion)
            .await
            .map(drop)
    }

    /// Whether the session's progress budget has room for one more.
    fn progress_allowed(&self) -> bool {
        self.progress_budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(std::time::Instant::now())
    }

    async fn on_message(&self, message: FromAgent, in_flight: &mut InFlightTasks) {
        match message {
            FromAgent::TaskAccepted { task_id } => {
                if in_flight.contains(&task_id) {
                    self.accepted.insert(&task_id);
                    if let Err(err) = self.accepted(task_id).await {
                        tracing::warn!(agent = %self.agent_id, error = %err, "could not log a task acceptance");
                    }
                }
            }
            FromAgent::TaskCompleted {
                task_id,
                succeeded,
                output,
                attempt,
            } => {
                // Not only tasks forwarded on this session: an agent sends
                // the reports the manager has not acknowledged again on
                // every new session, and they are recorded by attempt. A
                // task the agent was told to stop ends as why it was.
                let stopped = in_flight.reported(&task_id);
                self.accepted.remove(&task_id);
                let outcome = stopped.unwrap_or(if succeeded {
                    TaskOutcome::Succeeded
                } else {
                    TaskOutcome::Failed
                });
                let completion = Completion {
                    outcome,
                    task_id,
                    agent_id: self.agent_id,
                    session_id: self.session_id,
                    attempt,
                    output,
                };
                // Fails only once the session is over; the agent then sends
                // the report again on its next session.
                let _ = self.completions.send(completion).await;
            }
            FromAgent::TaskProgress {
                task_id,
                attempt,
                message,
                mut fraction,
                output,
            } => {
                // Only about a task this session runs; informational, so it
                // is logged in order without waiting for the commit.
                if !in_flight.contains(&task_id) || !self.progress_allowed() {
                    return;
                }
                if !fraction.is_finite() || fraction > 1.0 {
                    fraction = -1.0;
                }
                let event = Event::TaskProgress {
                    task_id,
                    attempt,
                    message,
                    fraction,
                    output,
                };
                if let Err(err) = self
                    .events
                    .enqueue(self.agent_id, self.generation, event)
                    .await
                {
                    tracing::warn!(agent = %self.agent_id, error = %err, "could not log task progress");
                }
            }
            FromAgent::ApprovalRequest(mut ask) => {
                // Only about the attempt this session runs, and of the
                // workflow its dispatcher named: what the agent says of
                // the workflow is not taken.
                let workflow = in_flight.workflow_of(&ask.task_id, ask.attempt);
                let runs_task = workflow.is_some();
                ask.workflow_id = workflow.unwrap_or_default().to_owned();
                self.approval_requested(ask, runs_task);
            }
            FromAgent::Heartbeat | FromAgent::Ignored => {}
        }
    }

    /// Stores (or looks up) an approval request off the session loop, and
    /// answers it at once when it is answered already. A request that
    /// cannot be handled now is dropped: the agent sends it again.
    fn approval_requested(&self, ask: ApprovalAsk, runs_task: bool) {
        let request_id = ask.request_id.clone();
        let ask = match ask.bounded() {
            Ok(ask) => ask,
            Err(why) => {
                let refused = refusal(&request_id, format!("invalid approval request: {why}"));
                let _ = self.outbound.try_send(ToAgent::ApprovalAnswer(refused));
                return;
            }
        };
        let Ok(permit) = self.approvals_in_progress.clone().try_acquire_owned() else {
            tracing::debug!(agent = %self.agent_id, "too many approval requests at once; the agent sends this one again");
            return;
        };
        let (approvals, outbound) = (self.approvals.clone(), self.outbound.clone());
        let (agent_id, generation) = (self.agent_id, self.generation);
        tokio::spawn(async move {
            let _permit = permit;
            match approvals.ask(agent_id, generation, ask, runs_task).await {
                Ok(Some(reply)) => {
                    let _ = outbound.send(ToAgent::ApprovalAnswer(reply)).await;
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(agent = %agent_id, error = %err, "could not store an approval request; the agent sends it again");
                }
            }
        });
    }

    /// Acceptance is informational: no state changes, so it is only
    /// logged as an event, queued (in order) without waiting for the commit.
    async fn accepted(&self, task_id: String) -> crate::error::Result<()> {
        self.events
            .enqueue(
                self.agent_id,
                self.generation,
                Event::TaskAccepted { task_id },
            )
            .await
    }
}

/// Records a session's task reports durably (each with its event, through
/// the event log's writer, which retries until they are stored), then
/// acknowledges each to the agent. A report the session ends before it is
/// recorded is sent again by the agent on its next session (it keeps every
/// report until acknowledged).
struct Recorder {
    agent_id: Uuid,
    generation: u64,
    events: EventLog,
    outbound: mpsc::Sender<ToAgent>,
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
        // The report and its event are stored together by the event log's
        // writer, which retries until they are. A report that completed
        // nothing is stale (an attempt superseded or already recorded): it
        // is acknowledged all the same, so the agent forgets it.
        let recorded = tokio::select! {
            _ = self.cancel.cancelled() => return,
            recorded = self.events.record_report(self.generation, completion) => recorded,
        };
        if let Err(err) = recorded {
            // The log is shutting down: the agent sends the report again on
            // its next session.
            tracing::warn!(agent = %self.agent_id, task = %task_id, error = %err, "could not record a task report");
            return;
        }
        let ack = ToAgent::ReportAck {
            task_id,
            attempt: reported_attempt,
        };
        let _ = self.outbound.send(ack).await;
    }
}

/// The hex SHA-256 of a session token: only this is stored.
pub(crate) fn hash_token(token: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

/// A fresh random session token (256 bits, hex).
pub(crate) use shepherd_platform::auth::random_secret as new_token;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_past_its_deadline_is_told_once_then_judged_after_its_grace() {
        let mut in_flight = InFlightTasks::default();
        let past = std::time::SystemTime::now() - Duration::from_secs(1);
        in_flight.delivered("late", 2, Some(past), "");
        in_flight.delivered("open-ended", 1, None, "");
        let now = Instant::now();
        let grace_until = now + Duration::from_secs(10);
        assert_eq!(
            in_flight.past_deadline(now, grace_until),
            vec![("late".to_owned(), 2)]
        );
        assert!(
            in_flight.past_deadline(now, grace_until).is_empty(),
            "told to stop once"
        );
        assert_eq!(in_flight.next_timer(), Some(grace_until));
        assert!(
            in_flight.past_grace(now).is_none(),
            "still within its grace"
        );
        assert_eq!(
            in_flight.past_grace(grace_until),
            Some(("late".to_owned(), 2, TaskOutcome::TimedOut))
        );
        // A report ends it as why it was stopped, whatever the agent says.
        assert_eq!(in_flight.reported("late"), Some(TaskOutcome::TimedOut));
        assert_eq!(in_flight.reported("open-ended"), None);
        assert_eq!(in_flight.next_timer(), None);
    }

    #[test]
    fn the_first_reason_to_stop_a_task_wins() {
        let mut in_flight = InFlightTasks::default();
        in_flight.delivered("t", 1, None, "");
        let until = Instant::now() + Duration::from_secs(5);
        assert!(in_flight.stop("t", TaskOutcome::Cancelled, until));
        assert!(in_flight.stop("t", TaskOutcome::TimedOut, until));
        assert!(
            !in_flight.stop("elsewhere", TaskOutcome::Cancelled, until),
            "a task this session does not run has nothing to stop"
        );
        assert_eq!(in_flight.reported("t"), Some(TaskOutcome::Cancelled));
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
