//! Asking before acting: a running task asks the manager for approval to
//! use a tool and waits for a person's decision.
//!
//! The process keeps every request until it is answered and sends it again
//! on each new session and every [`RESEND_INTERVAL`] meanwhile: the manager
//! stores requests by their id, so a request sent twice is one approval,
//! and one answered already is answered again. An answer lost to a
//! disconnect or a manager restart therefore still arrives.

use std::time::Duration;

use shepherd_proto::agentmanager::v1::{
    AgentMessage, ApprovalAnswer, ApprovalRequest, agent_message,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::Ledger;

pub use shepherd_proto::agentmanager::v1::ApprovalState;

/// How often an unanswered request is sent again on the live session.
pub(crate) const RESEND_INTERVAL: Duration = Duration::from_secs(10);

/// The answer to an approval request.
#[derive(Clone, Debug)]
pub struct ApprovalDecision {
    /// APPROVED, or why not: DENIED, EXPIRED (nobody decided in time) or
    /// WITHDRAWN (the task was cancelled or timed out meanwhile).
    pub state: ApprovalState,
    /// The decider's comment, or why it expired or was withdrawn.
    pub comment: String,
    /// Who decided ("shepherd" for an expiry or withdrawal).
    pub decided_by: String,
    /// The stored approval (empty when the manager refused the request
    /// outright).
    pub approval_id: String,
}

impl ApprovalDecision {
    pub fn approved(&self) -> bool {
        self.state == ApprovalState::Approved
    }

    fn from_answer(answer: ApprovalAnswer) -> Self {
        Self {
            state: ApprovalState::try_from(answer.state).unwrap_or(ApprovalState::Denied),
            comment: answer.comment,
            decided_by: answer.decided_by,
            approval_id: answer.approval_id,
        }
    }

    fn withdrawn(comment: &str) -> Self {
        Self {
            state: ApprovalState::Withdrawn,
            comment: comment.to_owned(),
            decided_by: String::new(),
            approval_id: String::new(),
        }
    }
}

/// A request waiting for its answer.
pub(crate) struct PendingApproval {
    pub(crate) task_id: String,
    pub(crate) message: AgentMessage,
    answer: oneshot::Sender<ApprovalDecision>,
}

/// Asks approvals for one running task (`IncomingTask::approver`).
#[derive(Clone)]
pub struct Approver {
    pub(crate) task_id: String,
    pub(crate) workflow_id: String,
    pub(crate) cancel: CancellationToken,
    pub(crate) ledger: Ledger,
}

impl std::fmt::Debug for Approver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approver")
            .field("task_id", &self.task_id)
            .finish()
    }
}

impl Approver {
    /// Asks to use `tool` (its `input` summarised, at most 4 KiB kept, and
    /// why) and waits for the decision, however long it takes: across
    /// reconnects and manager restarts. Returns WITHDRAWN at once when the
    /// task is cancelled meanwhile.
    pub async fn ask(
        &self,
        tool: impl Into<String>,
        input: impl Into<String>,
        reason: impl Into<String>,
    ) -> ApprovalDecision {
        let request_id = crate::random_instance_id();
        // The manager hears that the task runs before what it asks.
        self.ledger.accept(&self.task_id).await;
        let Some(attempt) = self.ledger.attempt_of(&self.task_id) else {
            return ApprovalDecision::withdrawn("the task is not running");
        };
        let message = AgentMessage {
            kind: Some(agent_message::Kind::ApprovalRequest(ApprovalRequest {
                request_id: request_id.clone(),
                task_id: self.task_id.clone(),
                attempt,
                workflow_id: self.workflow_id.clone(),
                tool: tool.into(),
                input: input.into(),
                reason: reason.into(),
            })),
        };
        let (answer, answered) = oneshot::channel();
        let pending = PendingApproval {
            task_id: self.task_id.clone(),
            message,
            answer,
        };
        self.ledger.await_approval(&request_id, pending);
        // Unanswered on drop (cancelled, or the handler gave up): forget it.
        let _forget = Forget {
            ledger: &self.ledger,
            request_id: &request_id,
        };
        let mut answered = std::pin::pin!(answered);
        loop {
            self.ledger.send_approval_request(&request_id).await;
            tokio::select! {
                decision = &mut answered => {
                    return decision.unwrap_or_else(|_| ApprovalDecision::withdrawn("the agent is exiting"));
                }
                _ = self.cancel.cancelled() => {
                    return ApprovalDecision::withdrawn("the task was cancelled (or timed out) while it waited");
                }
                _ = tokio::time::sleep(RESEND_INTERVAL) => {}
            }
        }
    }
}

struct Forget<'a> {
    ledger: &'a Ledger,
    request_id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.ledger.lock().approvals.remove(self.request_id);
    }
}

impl Ledger {
    fn attempt_of(&self, task_id: &str) -> Option<u32> {
        self.lock()
            .running
            .get(task_id)
            .map(|running| running.attempt)
    }

    fn await_approval(&self, request_id: &str, pending: PendingApproval) {
        self.lock().approvals.insert(request_id.to_owned(), pending);
    }

    /// Sends a pending request on the live session, if one is open (else
    /// the next session's opening sends it).
    async fn send_approval_request(&self, request_id: &str) {
        let route = {
            let state = self.lock();
            let message = state.approvals.get(request_id).map(|p| p.message.clone());
            message.zip(state.session.clone())
        };
        if let Some((message, session)) = route {
            let _ = session.send(message).await;
        }
    }

    /// Hands an answer to whoever waits for it (an answer to a request
    /// nobody waits for any more is dropped).
    pub(crate) fn approval_answered(&self, answer: ApprovalAnswer) {
        let pending = self.lock().approvals.remove(&answer.request_id);
        if let Some(pending) = pending {
            tracing::info!(task_id = %pending.task_id, state = ?ApprovalState::try_from(answer.state), "approval answered");
            let _ = pending.answer.send(ApprovalDecision::from_answer(answer));
        }
    }

    /// The requests still waiting, to send on a new session.
    pub(crate) fn pending_approvals(&self) -> Vec<AgentMessage> {
        self.lock()
            .approvals
            .values()
            .map(|pending| pending.message.clone())
            .collect()
    }
}
