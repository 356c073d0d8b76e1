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

use crate::decision::ApprovalDecision;
use crate::ledger::{Ledger, PendingApproval};

use shepherd_proto::agentmanager::v1::ApprovalState;

/// How often an unanswered request is sent again on the live session.
pub(crate) const RESEND_INTERVAL: Duration = Duration::from_secs(10);
/// Largest input and reason the manager takes (a longer one is refused,
/// never cut: a person approves exactly what runs).
pub(crate) const MAX_INPUT_BYTES: usize = 4 * 1024;
pub(crate) const MAX_REASON_BYTES: usize = 1024;

/// Why a request cannot be asked as it is, if so.
pub(crate) fn unaskable(input: &str, reason: &str) -> Option<String> {
    for (field, text, max) in [
        ("input", input, MAX_INPUT_BYTES),
        ("reason", reason, MAX_REASON_BYTES),
    ] {
        if text.len() > max {
            return Some(format!(
                "the {field} is {} bytes, at most {max} (an approval is never cut: ask about less)",
                text.len()
            ));
        }
        if text.contains('\0') {
            return Some(format!("the {field} holds a NUL character"));
        }
    }
    None
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
    /// Asks to use `tool` with `input` (exactly what will run, at most
    /// 4 KiB) and why (at most 1 KiB), and waits for the decision, however
    /// long it takes: across reconnects and manager restarts. Returns
    /// WITHDRAWN at once when the task is cancelled meanwhile, and a denial
    /// with `cannot_ask` set, without asking, for an input or reason over
    /// its bound. An approval counts only if it carries the digest of this
    /// tool and input.
    pub async fn ask(
        &self,
        tool: impl Into<String>,
        input: impl Into<String>,
        reason: impl Into<String>,
    ) -> ApprovalDecision {
        let (tool, input, reason) = (tool.into(), input.into(), reason.into());
        if let Some(why) = unaskable(&input, &reason) {
            return ApprovalDecision::cannot_ask(why);
        }
        let digest = shepherd_proto::approval_digest(&tool, &input);
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
                tool,
                input,
                reason,
            })),
        };
        let (answer, answered) = oneshot::channel();
        let pending = PendingApproval {
            task_id: self.task_id.clone(),
            message,
            digest,
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
            let decision = ApprovalDecision::from_answer(answer, &pending.digest);
            let _ = pending.answer.send(decision);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(state: ApprovalState, digest: &str) -> ApprovalAnswer {
        ApprovalAnswer {
            request_id: "r".into(),
            approval_id: "a".into(),
            state: state as i32,
            comment: "ok".into(),
            decided_by: "alice".into(),
            digest: digest.into(),
        }
    }

    #[test]
    fn an_approval_of_something_else_is_no_approval() {
        let asked = shepherd_proto::approval_digest("shell", "git status");
        assert!(
            ApprovalDecision::from_answer(answer(ApprovalState::Approved, &asked), &asked)
                .approved()
        );
        let other = shepherd_proto::approval_digest("shell", "git status; curl x | sh");
        let decision =
            ApprovalDecision::from_answer(answer(ApprovalState::Approved, &other), &asked);
        assert!(!decision.approved());
        assert!(decision.comment.contains("another"), "{}", decision.comment);
        // A denial needs no digest.
        let denied = ApprovalDecision::from_answer(answer(ApprovalState::Denied, ""), &asked);
        assert_eq!(denied.state, ApprovalState::Denied);
    }

    #[test]
    fn what_would_be_cut_cannot_be_asked() {
        assert!(unaskable(&"x".repeat(MAX_INPUT_BYTES), "").is_none());
        let why = unaskable(&"x".repeat(MAX_INPUT_BYTES + 1), "").unwrap_or_default();
        assert!(why.contains("never cut"), "{why}");
        assert!(unaskable("a\0b", "").is_some());
        assert!(unaskable("", &"r".repeat(MAX_REASON_BYTES + 1)).is_some());
    }
}
