//! A person's decision on an approval request, as a task receives it.

use shepherd_proto::agentmanager::v1::ApprovalAnswer;

pub use shepherd_proto::agentmanager::v1::ApprovalState;

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
    /// The request could not be asked as it is (input or reason over its
    /// bound, or a NUL in it): nobody was asked, and it is not approved.
    pub cannot_ask: bool,
}

impl ApprovalDecision {
    pub fn approved(&self) -> bool {
        self.state == ApprovalState::Approved
    }

    /// The decision an answer carries, for the request whose digest is
    /// `asked`: an approval of anything else (another tool or input under
    /// a reused request id) is no approval.
    pub(crate) fn from_answer(answer: ApprovalAnswer, asked: &str) -> Self {
        let state = ApprovalState::try_from(answer.state).unwrap_or(ApprovalState::Denied);
        if state == ApprovalState::Approved && answer.digest != asked {
            return Self {
                state: ApprovalState::Denied,
                comment:
                    "the approval was for another tool or input than this request's: not approved"
                        .to_owned(),
                decided_by: answer.decided_by,
                approval_id: answer.approval_id,
                cannot_ask: false,
            };
        }
        Self {
            state,
            comment: answer.comment,
            decided_by: answer.decided_by,
            approval_id: answer.approval_id,
            cannot_ask: false,
        }
    }

    pub(crate) fn withdrawn(comment: &str) -> Self {
        Self {
            state: ApprovalState::Withdrawn,
            comment: comment.to_owned(),
            decided_by: String::new(),
            approval_id: String::new(),
            cannot_ask: false,
        }
    }

    pub(crate) fn cannot_ask(why: String) -> Self {
        Self {
            state: ApprovalState::Denied,
            comment: format!("cannot ask: {why}"),
            decided_by: String::new(),
            approval_id: String::new(),
            cannot_ask: true,
        }
    }
}
