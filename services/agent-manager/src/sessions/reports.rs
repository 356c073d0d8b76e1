//! What an agent reports about its tasks on a session (accepted,
//! progress, completed, approval requests), and the recorder that stores
//! completions durably before acknowledging them.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::handle::AcceptedTasks;
use super::in_flight::InFlightTasks;
use crate::approvals::Approvals;
use crate::events::{Event, EventLog};
use crate::model::approval::{ApprovalAsk, refusal};
use crate::model::task::TaskOutcome;
use crate::protocol::{FromAgent, ToAgent};
use crate::rate::TokenBucket;
use crate::store::Completion;

/// Largest task output kept (in the task row and its `TaskCompleted` event).
pub(crate) const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Largest progress message, and output chunk, of a `TaskProgress`.
pub(crate) const MAX_PROGRESS_MESSAGE_BYTES: usize = 1024;
pub(crate) const MAX_PROGRESS_OUTPUT_BYTES: usize = 16 * 1024;
/// Takes what the agent reports about its tasks.
pub(super) struct TaskReports {
    pub(super) agent_id: Uuid,
    pub(super) session_id: Uuid,
    pub(super) generation: u64,
    pub(super) accepted: AcceptedTasks,
    pub(super) events: EventLog,
    /// Completions to record (by the session's `Recorder`).
    pub(super) completions: mpsc::Sender<Completion>,
    pub(super) approvals: Approvals,
    pub(super) approvals_in_progress: Arc<tokio::sync::Semaphore>,
    pub(super) outbound: mpsc::Sender<ToAgent>,
    /// Progress this session may still log (the rest is dropped).
    pub(super) progress_budget: Mutex<TokenBucket>,
}

impl TaskReports {
    /// Records a completion the manager decided on itself (with its event,
    /// in one transaction), before the session ends (so the sweep that
    /// follows does not call it lost).
    pub(super) async fn record_now(&self, completion: Completion) -> crate::error::Result<()> {
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

    pub(super) async fn on_message(&self, message: FromAgent, in_flight: &mut InFlightTasks) {
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
            FromAgent::Usage(usage) => {
                // Only about the attempt this session runs. Totals, so a
                // report dropped here (the progress budget is spent) is
                // made good by the next one.
                if in_flight
                    .workflow_of(&usage.task_id, usage.attempt)
                    .is_none()
                    || !self.progress_allowed()
                {
                    return;
                }
                let event = Event::TaskUsage {
                    task_id: usage.task_id,
                    attempt: usage.attempt,
                    input_tokens: usage.input_tokens,
                    output_tokens: usage.output_tokens,
                    cost: usage.cost,
                };
                if let Err(err) = self
                    .events
                    .enqueue(self.agent_id, self.generation, event)
                    .await
                {
                    tracing::warn!(agent = %self.agent_id, error = %err, "could not log task usage");
                }
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
pub(super) struct Recorder {
    pub(super) agent_id: Uuid,
    pub(super) generation: u64,
    pub(super) events: EventLog,
    pub(super) outbound: mpsc::Sender<ToAgent>,
    pub(super) cancel: CancellationToken,
}

impl Recorder {
    pub(super) async fn run(self, mut pending: mpsc::Receiver<Completion>) {
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
