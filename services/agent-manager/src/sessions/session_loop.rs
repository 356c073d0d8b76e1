//! The loop that runs one session: heartbeats both ways, tasks out,
//! reports in, task deadlines, and disconnect detection. It never touches
//! the registry; when it ends it says why (`SessionEnd`) and the session's
//! caller tells the supervisor.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use shepherd_platform::timer::sleep_until_some;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::handle::SessionHandle;
use super::in_flight::InFlightTasks;
use super::reports::{Recorder, TaskReports};
use crate::approvals::Approvals;
use crate::events::EventLog;
use crate::model::task::TaskOutcome;
use crate::protocol::{FromAgent, ToAgent};
use crate::rate::{PROGRESS_BURST, PROGRESS_PER_SECOND, TokenBucket};
use crate::store::Completion;

/// Reports waiting to be recorded, per session. The session loop only
/// waits when this many are queued behind a database outage.
const REPORT_QUEUE: usize = 4096;
/// Approval requests of one session being stored at once; more are
/// dropped (the agent sends them again).
const APPROVALS_IN_PROGRESS: usize = 8;

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
                        // One notice per task of the spent budget that
                        // this session runs.
                        ToAgent::BudgetSpent { workflow_id, summary, grace } => {
                            for (task_id, attempt) in in_flight.of_workflow(workflow_id) {
                                let notice = ToAgent::BudgetNotice { task_id, attempt, summary: summary.clone(), grace: *grace };
                                if self.outbound.send(notice).await.is_err() {
                                    return SessionEnd::gone("agent went away");
                                }
                            }
                            false
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
