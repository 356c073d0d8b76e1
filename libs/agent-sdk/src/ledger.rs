//! What the process knows of its tasks across sessions (the ledger), and the
//! watchdog that ends an agent whose manager is gone for good.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shepherd_proto::agentmanager::v1::{
    AgentMessage, HeldTask, TaskAccepted, TaskCompleted, agent_message,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::decision::ApprovalDecision;
use crate::result::TaskResult;

/// What the process knows of its tasks across sessions: which run now, and
/// which finished with a report the manager has not acknowledged yet.
#[derive(Clone, Default)]
pub(crate) struct Ledger {
    inner: Arc<Mutex<LedgerState>>,
}

#[derive(Default)]
pub(crate) struct LedgerState {
    /// Running tasks: the latest attempt delivered for each, and the token
    /// that cancels it.
    pub(crate) running: HashMap<String, Running>,
    /// Finished tasks' reports, until acknowledged.
    pub(crate) unacked: HashMap<String, TaskCompleted>,
    /// Approval requests waiting for their answer, by request id.
    pub(crate) approvals: HashMap<String, PendingApproval>,
    /// The live session's outbound messages, if a session is open.
    pub(crate) session: Option<mpsc::Sender<AgentMessage>>,
    /// When the manager was last heard from (or the agent started).
    pub(crate) last_heard: Option<Instant>,
}

/// A request waiting for its answer.
pub(crate) struct PendingApproval {
    pub(crate) task_id: String,
    pub(crate) message: AgentMessage,
    /// What an approval must carry to be this request's.
    pub(crate) digest: String,
    pub(crate) answer: oneshot::Sender<ApprovalDecision>,
}

pub(crate) struct Running {
    pub(crate) attempt: u32,
    pub(crate) deadline: Option<prost_types::Timestamp>,
    pub(crate) cancel: CancellationToken,
    /// Whether the manager was told the task runs (`TaskAccepted`).
    pub(crate) accepted: bool,
}

/// What to do with a delivered task.
pub(crate) enum Delivery {
    /// New: run it; this token cancels it.
    Run(CancellationToken),
    /// Already running: the running execution answers for this attempt.
    Running,
    /// Already finished: send this (kept) report again, for this attempt.
    Report(AgentMessage),
}

impl Ledger {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        // Maps of ids and reports: no invariant a panicking holder breaks.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn deliver(
        &self,
        task_id: &str,
        attempt: u32,
        deadline: Option<prost_types::Timestamp>,
    ) -> Delivery {
        let mut state = self.lock();
        if let Some(running) = state.running.get_mut(task_id) {
            if attempt > running.attempt {
                running.attempt = attempt;
                running.deadline = deadline;
            }
            return Delivery::Running;
        }
        if let Some(report) = state.unacked.get_mut(task_id) {
            report.attempt = report.attempt.max(attempt);
            return Delivery::Report(completed_message(report.clone()));
        }
        let cancel = CancellationToken::new();
        let running = Running {
            attempt,
            deadline,
            cancel: cancel.clone(),
            accepted: false,
        };
        state.running.insert(task_id.to_owned(), running);
        Delivery::Run(cancel)
    }

    /// Where a running task's progress goes: its latest attempt and the
    /// live session (None: not running, or no session).
    pub(crate) fn progress_route(
        &self,
        task_id: &str,
    ) -> Option<(u32, mpsc::Sender<AgentMessage>)> {
        let state = self.lock();
        let attempt = state.running.get(task_id)?.attempt;
        Some((attempt, state.session.clone()?))
    }

    /// Tells the manager, once, that a running task runs: before the first
    /// thing said about it (progress, an approval request) or once its
    /// handler has to wait. A task that finishes at once says nothing
    /// before its report, which implies acceptance: a no-op task costs
    /// one message each way instead of two (and the manager one event).
    pub(crate) async fn accept(&self, task_id: &str) {
        let session = {
            let mut state = self.lock();
            match state.running.get_mut(task_id) {
                Some(running) if !running.accepted => {
                    running.accepted = true;
                    state.session.clone()
                }
                _ => None,
            }
        };
        // If the session is gone the task runs anyway: the next session's
        // hello names it.
        if let Some(session) = session {
            let _ = session.send(accepted_message(task_id)).await;
        }
    }

    /// Every task this process holds (running, or finished and not
    /// acknowledged), for the hello of a new session.
    pub(crate) fn held(&self) -> Vec<HeldTask> {
        let state = self.lock();
        let running = state.running.iter().map(|(task_id, running)| HeldTask {
            task_id: task_id.clone(),
            attempt: running.attempt,
            deadline: running.deadline,
        });
        let finished = state.unacked.values().map(|report| HeldTask {
            task_id: report.task_id.clone(),
            attempt: report.attempt,
            deadline: None,
        });
        running.chain(finished).collect()
    }

    /// Cancels a running task (the manager asked to stop it).
    pub(crate) fn cancel(&self, task_id: &str) {
        if let Some(running) = self.lock().running.get(task_id) {
            running.cancel.cancel();
        }
    }

    /// Stops every running task (the agent is exiting).
    pub(crate) fn cancel_all(&self) {
        for running in self.lock().running.values() {
            running.cancel.cancel();
        }
    }

    /// Keeps the finished task's report and returns it with the latest
    /// attempt delivered meanwhile, and the session to send it on.
    pub(crate) fn finish(
        &self,
        task_id: &str,
        result: TaskResult,
    ) -> (AgentMessage, Option<mpsc::Sender<AgentMessage>>) {
        let mut state = self.lock();
        let attempt = state
            .running
            .remove(task_id)
            .map_or(0, |running| running.attempt);
        let report = TaskCompleted {
            task_id: task_id.to_owned(),
            outcome: result.outcome as i32,
            output: result.output,
            attempt,
        };
        state.unacked.insert(task_id.to_owned(), report.clone());
        (completed_message(report), state.session.clone())
    }

    pub(crate) fn acknowledged(&self, task_id: &str, attempt: u32) {
        let mut state = self.lock();
        // A report re-sent for a later attempt waits for its own ack.
        if state
            .unacked
            .get(task_id)
            .is_some_and(|report| report.attempt == attempt)
        {
            state.unacked.remove(task_id);
        }
    }

    /// Makes `outbound` the live session; returns the reports to send again.
    pub(crate) fn open(&self, outbound: mpsc::Sender<AgentMessage>) -> Vec<AgentMessage> {
        let mut state = self.lock();
        state.session = Some(outbound);
        state
            .unacked
            .values()
            .cloned()
            .map(completed_message)
            .collect()
    }

    pub(crate) fn close(&self) {
        self.lock().session = None;
    }

    pub(crate) fn heard(&self) {
        self.lock().last_heard = Some(Instant::now());
    }

    pub(crate) fn silent_for(&self) -> Duration {
        let mut state = self.lock();
        let since = *state.last_heard.get_or_insert_with(Instant::now);
        since.elapsed()
    }
}

/// Exits with the agent's whole process group once the manager has not
/// been heard from for `timeout`: a manager that is gone for good (killed,
/// never restarted) must not leave its agents, and whatever they started,
/// running forever.
pub(crate) async fn orphan_watchdog(ledger: Ledger, timeout: Duration) {
    loop {
        tokio::time::sleep(Duration::from_secs(1).min(timeout)).await;
        let silent = ledger.silent_for();
        if silent < timeout {
            continue;
        }
        tracing::error!(
            ?silent,
            "the agent-manager has been unreachable past the orphan timeout; exiting with the agent's process group"
        );
        use nix::unistd::{getpgrp, getpid};
        // Only a group of our own (the manager starts every agent as a
        // group leader): never the group of a shell that started us.
        if getpgrp() == getpid() {
            let _ = nix::sys::signal::killpg(getpgrp(), nix::sys::signal::Signal::SIGKILL);
        }
        std::process::exit(1);
    }
}

pub(crate) fn completed_message(report: TaskCompleted) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::TaskCompleted(report)),
    }
}

pub(crate) fn accepted_message(task_id: &str) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::TaskAccepted(TaskAccepted {
            task_id: task_id.to_owned(),
        })),
    }
}
