//! An approval as a value: what an agent asked (`ApprovalAsk`, checked
//! whole against its bounds), what is stored (`Approval`, bound by digest
//! to tool and input), and what the agent is told (`Answer`). No I/O here:
//! `approvals` stores and decides, the sessions carry.

use std::time::SystemTime;

use uuid::Uuid;

/// Longest request id, tool name and workflow id an agent may send.
pub(crate) const MAX_REQUEST_ID_LEN: usize = 100;
pub(crate) const MAX_TOOL_LEN: usize = 200;
const MAX_WORKFLOW_ID_LEN: usize = 100;
/// Longest input and reason an agent may ask with (longer ones are
/// refused: a person approves exactly what runs), and comment a decider
/// may give.
pub(crate) const MAX_INPUT_BYTES: usize = 4 * 1024;
pub(crate) const MAX_REASON_BYTES: usize = 1024;
pub(crate) const MAX_COMMENT_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    /// Nobody decided in time: a denial.
    Expired,
    /// The task stopped needing it: a denial.
    Withdrawn,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "approved" => Some(Self::Approved),
            "denied" => Some(Self::Denied),
            "expired" => Some(Self::Expired),
            "withdrawn" => Some(Self::Withdrawn),
            _ => None,
        }
    }
}

/// A stored approval.
#[derive(Debug, Clone)]
pub struct Approval {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub request_id: String,
    /// The agent's generation when it asked.
    pub generation: u64,
    pub task_id: String,
    pub attempt: u32,
    pub workflow_id: String,
    pub tool: String,
    pub input: String,
    pub reason: String,
    /// What a decision binds to (`shepherd_proto::approval_digest` of tool
    /// and input).
    pub digest: String,
    pub state: ApprovalState,
    pub comment: String,
    pub decided_by: String,
    pub created_at: SystemTime,
    pub expires_at: SystemTime,
    pub decided_at: Option<SystemTime>,
}

impl Approval {
    /// What the agent is told: its request's final state.
    pub(crate) fn answer(&self) -> Answer {
        Answer {
            request_id: self.request_id.clone(),
            approval_id: self.id.to_string(),
            state: self.state,
            comment: self.comment.clone(),
            decided_by: self.decided_by.clone(),
            digest: self.digest.clone(),
        }
    }

    /// Whether `ask` is the request this approval was stored for: the same
    /// task, attempt, tool and input. A request id reused for anything else
    /// must not get this approval's answer.
    pub(crate) fn answers(&self, ask: &ApprovalAsk) -> bool {
        self.task_id == ask.task_id && self.attempt == ask.attempt && self.digest == ask.digest()
    }
}

/// The answer to an agent's request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub request_id: String,
    /// Empty when the request was refused without being stored.
    pub approval_id: String,
    pub state: ApprovalState,
    pub comment: String,
    pub decided_by: String,
    /// The digest decided on (empty for a refusal).
    pub digest: String,
}

/// What an agent asked, within bounds.
#[derive(Debug, Clone)]
pub struct ApprovalAsk {
    pub request_id: String,
    pub task_id: String,
    pub attempt: u32,
    pub workflow_id: String,
    pub tool: String,
    pub input: String,
    pub reason: String,
}

impl ApprovalAsk {
    /// Checks every field against its bound. Nothing is cut or cleaned:
    /// what a person sees must be exactly what the agent runs, so a field
    /// that cannot be stored as it is, is refused (the agent is told why).
    pub fn bounded(self) -> std::result::Result<Self, String> {
        let printable = |text: &str| !text.chars().any(char::is_control);
        if self.request_id.is_empty()
            || self.request_id.len() > MAX_REQUEST_ID_LEN
            || !printable(&self.request_id)
        {
            return Err(format!(
                "request_id must be 1-{MAX_REQUEST_ID_LEN} printable characters"
            ));
        }
        if !printable(&self.task_id) || !printable(&self.workflow_id) {
            return Err("task_id and workflow_id must be printable".into());
        }
        if self.tool.is_empty()
            || self.tool.len() > MAX_TOOL_LEN
            || self.tool.chars().any(char::is_control)
        {
            return Err(format!(
                "tool must be 1-{MAX_TOOL_LEN} printable characters"
            ));
        }
        if self.workflow_id.len() > MAX_WORKFLOW_ID_LEN {
            return Err(format!(
                "workflow_id must be at most {MAX_WORKFLOW_ID_LEN} characters"
            ));
        }
        for (field, text, max) in [
            ("input", &self.input, MAX_INPUT_BYTES),
            ("reason", &self.reason, MAX_REASON_BYTES),
        ] {
            if text.len() > max || text.contains('\0') {
                return Err(format!(
                    "{field} must be at most {max} bytes without NUL ({} given): an approval is never cut, ask for less",
                    text.len()
                ));
            }
        }
        Ok(self)
    }

    /// What a decision on this request binds to.
    pub fn digest(&self) -> String {
        shepherd_proto::approval_digest(&self.tool, &self.input)
    }
}

/// Which approvals to list.
#[derive(Debug, Clone, Default)]
pub struct ApprovalFilter {
    pub state: Option<ApprovalState>,
    pub agent_id: Option<Uuid>,
    pub workflow_id: Option<String>,
    /// Paging: only approvals older than this one.
    pub before: Option<Uuid>,
}

/// Who decides: the credential's name (recorded), and the agent it was
/// handed to, if any.
#[derive(Debug, Clone)]
pub(crate) struct Decider {
    pub name: String,
    pub agent: Option<String>,
}

/// Whether a credential handed to `agent` (an id) is the asking agent's.
pub(crate) fn decider_is_the_asker(agent: &str, approval: &Approval) -> bool {
    Uuid::parse_str(agent).is_ok_and(|agent| agent == approval.agent_id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Approve,
    Deny,
}

/// An answer that refuses a request without storing it.
pub(crate) fn refusal(request_id: &str, why: String) -> Answer {
    Answer {
        request_id: request_id.to_owned(),
        approval_id: String::new(),
        state: ApprovalState::Denied,
        comment: why,
        decided_by: crate::store::SHEPHERD.to_owned(),
        digest: String::new(),
    }
}

/// The refusal of a request id used before for another request.
pub(crate) fn reused(request_id: &str) -> Answer {
    refusal(
        request_id,
        "this request id was used for another request (task, attempt, tool or input): ask with a new request id".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ApprovalAsk {
        ApprovalAsk {
            request_id: "r1".into(),
            task_id: "t1".into(),
            attempt: 1,
            workflow_id: String::new(),
            tool: "deploy".into(),
            input: "x".repeat(MAX_INPUT_BYTES),
            reason: "é".repeat(MAX_REASON_BYTES / 2),
        }
    }

    #[test]
    fn refuses_what_it_cannot_keep_whole_and_bad_identifiers() {
        let ask = request().bounded().unwrap();
        assert_eq!(
            ask.input.len(),
            MAX_INPUT_BYTES,
            "kept whole, up to the bound"
        );

        let mut over = request();
        over.input.push('x');
        let why = over.bounded().unwrap_err();
        assert!(why.contains("input") && why.contains("never cut"), "{why}");
        let mut long_reason = request();
        long_reason.reason = "r".repeat(MAX_REASON_BYTES + 1);
        assert!(long_reason.bounded().is_err());
        let mut nul_input = request();
        nul_input.input = "a\0b".into();
        assert!(nul_input.bounded().is_err());

        let mut empty_tool = request();
        empty_tool.tool.clear();
        assert!(ApprovalAsk::bounded(empty_tool).is_err());
        let mut control = request();
        control.tool = "rm\n-rf".into();
        assert!(ApprovalAsk::bounded(control).is_err());
        let mut long_id = request();
        long_id.request_id = "r".repeat(MAX_REQUEST_ID_LEN + 1);
        assert!(ApprovalAsk::bounded(long_id).is_err());
        let mut nul_task = request();
        nul_task.task_id = "t\0".into();
        assert!(ApprovalAsk::bounded(nul_task).is_err());
    }

    /// An approval answers only the request it was stored for: the same
    /// task, attempt, tool and input.
    #[test]
    fn a_decision_binds_to_task_attempt_tool_and_input() {
        let ask = request();
        let approval = Approval {
            id: Uuid::nil(),
            agent_id: Uuid::nil(),
            request_id: ask.request_id.clone(),
            generation: 1,
            task_id: ask.task_id.clone(),
            attempt: ask.attempt,
            workflow_id: String::new(),
            tool: ask.tool.clone(),
            input: ask.input.clone(),
            reason: String::new(),
            digest: ask.digest(),
            state: ApprovalState::Approved,
            comment: String::new(),
            decided_by: "alice".into(),
            created_at: SystemTime::UNIX_EPOCH,
            expires_at: SystemTime::UNIX_EPOCH,
            decided_at: None,
        };
        assert!(approval.answers(&ask));
        assert_eq!(approval.answer().digest, ask.digest());
        let changed: [fn(&mut ApprovalAsk); 4] = [
            |ask| ask.input.push_str("; curl x | sh"),
            |ask| ask.tool = "shell".into(),
            |ask| ask.task_id = "t2".into(),
            |ask| ask.attempt = 2,
        ];
        for change in changed {
            let mut other = request();
            change(&mut other);
            assert!(!approval.answers(&other), "{other:?}");
        }
    }

    #[test]
    fn states_round_trip() {
        for state in [
            ApprovalState::Pending,
            ApprovalState::Approved,
            ApprovalState::Denied,
            ApprovalState::Expired,
            ApprovalState::Withdrawn,
        ] {
            assert_eq!(ApprovalState::parse(state.as_str()), Some(state));
        }
        assert_eq!(ApprovalState::parse("maybe"), None);
    }
}
