//! What the process knows of its tasks across sessions (the ledger), and the
//! watchdog that ends an agent whose manager is gone for good.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shepherd_proto::agentmanager::v1::{
    AgentMessage, HeldTask, TaskAccepted, TaskCompleted, agent_message,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::budget::{Budget, BudgetSpent};
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
    /// What the task used so far (`report_usage` adds to it).
    pub(crate) usage: TaskUsage,
    /// Set when the manager says a budget of the task is spent.
    pub(crate) budget: watch::Sender<Option<BudgetSpent>>,
}

/// What to do with a delivered task.
pub(crate) enum Delivery {
    /// New: run it; this token cancels it; this says when its budget is
    /// spent.
    Run(CancellationToken, Budget),
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
        let (budget, spent) = watch::channel(None);
        let running = Running {
            attempt,
            deadline,
            cancel: cancel.clone(),
            accepted: false,
            usage: TaskUsage::default(),
            budget,
        };
        state.running.insert(task_id.to_owned(), running);
        Delivery::Run(cancel, Budget { spent })
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

    /// Adds to a running task's usage; the totals to send and where (None:
    /// not running, or no session: the totals go out on the next session).
    pub(crate) fn add_usage(
        &self,
        task_id: &str,
        input_tokens: u64,
        output_tokens: u64,
        cost: f64,
    ) -> Option<(AgentMessage, mpsc::Sender<AgentMessage>)> {
        let mut state = self.lock();
        let running = state.running.get_mut(task_id)?;
        running.usage.input_tokens = running.usage.input_tokens.saturating_add(input_tokens);
        running.usage.output_tokens = running.usage.output_tokens.saturating_add(output_tokens);
        if cost.is_finite() && cost > 0.0 {
            running.usage.cost += cost;
        }
        let message = usage_message(task_id, running);
        Some((message, state.session.clone()?))
    }

    /// The manager says a budget of the task is spent.
    pub(crate) fn budget_spent(&self, task_id: &str, spent: BudgetSpent) {
        if let Some(running) = self.lock().running.get(task_id) {
            running.budget.send_replace(Some(spent));
        }
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
        let usage = state
            .running
            .iter()
            .filter(|(_, running)| running.usage != TaskUsage::default())
            .map(|(task_id, running)| usage_message(task_id, running));
        state
            .unacked
            .values()
            .cloned()
            .map(completed_message)
            .chain(usage)
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

/// A task attempt's usage so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct TaskUsage {
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cost: f64,
}

fn usage_message(task_id: &str, running: &Running) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Usage(
            shepherd_proto::agentmanager::v1::TaskUsage {
                task_id: task_id.to_owned(),
                attempt: running.attempt,
                input_tokens: running.usage.input_tokens,
                output_tokens: running.usage.output_tokens,
                cost: running.usage.cost,
            },
        )),
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
