//! Approvals, with everything their agent sent escaped for a reader.

use serde_json::{Value, json};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::short_name as short;

use super::format::{Render, shown, time};

pub(super) fn approval_json(approval: Option<&am::Approval>) -> Value {
    approval.map_or_else(|| json!({}), Render::json)
}

/// An approval state's short name ("pending", "approved", ...).
pub(crate) fn approval_state(approval: &am::Approval) -> String {
    short(approval.state().as_str_name(), "APPROVAL_STATE_")
}

impl Render for am::Approval {
    fn headers() -> &'static [&'static str] {
        &[
            "id",
            "state",
            "tool",
            "task",
            "agent",
            "asked",
            "decided by",
            "comment",
        ]
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            approval_state(self),
            shown(&self.tool),
            shown(&self.task_id),
            self.agent_id.clone(),
            time(self.create_time.as_ref()),
            self.decided_by.clone(),
            shown(&self.comment),
        ]
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.clone()),
            ("state", approval_state(self)),
            // What the agent sent, escaped: a person approves exactly what
            // runs, with no tail hidden by \r, ANSI codes or a bidi override.
            ("tool", shown(&self.tool)),
            ("input", shown(&self.input)),
            ("reason", shown(&self.reason)),
            ("digest", self.digest.clone()),
            (
                "task",
                format!("{} (attempt {})", shown(&self.task_id), self.attempt),
            ),
            ("workflow", self.workflow_id.clone()),
            ("agent", self.agent_id.clone()),
            ("asked", time(self.create_time.as_ref())),
            ("expires", time(self.expire_time.as_ref())),
            ("decided", time(self.decide_time.as_ref())),
            ("decided by", self.decided_by.clone()),
            ("comment", shown(&self.comment)),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "state": approval_state(self),
            "agent_id": self.agent_id,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "workflow_id": self.workflow_id,
            "tool": self.tool,
            "input": self.input,
            "reason": self.reason,
            "digest": self.digest,
            "comment": self.comment,
            "decided_by": self.decided_by,
            "create_time": time(self.create_time.as_ref()),
            "decide_time": time(self.decide_time.as_ref()),
            "expire_time": time(self.expire_time.as_ref()),
        })
    }
}

/// An approval with everything its agent sent escaped for a reader (MCP
/// hands approvals to a model and a person; JSON output keeps them exact
/// for programs).
pub(crate) fn approval_shown(approval: &am::Approval) -> am::Approval {
    am::Approval {
        tool: shown(&approval.tool),
        input: shown(&approval.input),
        reason: shown(&approval.reason),
        task_id: shown(&approval.task_id),
        comment: shown(&approval.comment),
        ..approval.clone()
    }
}
