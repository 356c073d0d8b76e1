//! The names of agent event kinds: what the manager's log stores in its
//! `kind` column and what `WatchAgentEventsRequest.kinds` takes.

/// The names of the event kinds, as stored and as watchers name them.
pub const KIND_NAMES: [&str; 16] = [
    "created",
    "started",
    "ready",
    "disconnected",
    "exited",
    "restarted",
    "stopped",
    "deleted",
    "task_accepted",
    "task_completed",
    "task_lost",
    "task_progress",
    "approval_requested",
    "approval_decided",
    "task_usage",
    "budget_exhausted",
];

/// A readable name of an event kind: the `kind` column operators query,
/// the names watchers filter by and tests assert on.
pub fn kind_name(kind: Option<&crate::agentmanager::v1::agent_event::Kind>) -> &'static str {
    use crate::agentmanager::v1::agent_event::Kind;
    match kind {
        Some(Kind::Created(_)) => "created",
        Some(Kind::Started(_)) => "started",
        Some(Kind::Ready(_)) => "ready",
        Some(Kind::Disconnected(_)) => "disconnected",
        Some(Kind::Exited(_)) => "exited",
        Some(Kind::Restarted(_)) => "restarted",
        Some(Kind::Stopped(_)) => "stopped",
        Some(Kind::Deleted(_)) => "deleted",
        Some(Kind::TaskAccepted(_)) => "task_accepted",
        Some(Kind::TaskCompleted(_)) => "task_completed",
        Some(Kind::TaskLost(_)) => "task_lost",
        Some(Kind::TaskProgress(_)) => "task_progress",
        Some(Kind::ApprovalRequested(_)) => "approval_requested",
        Some(Kind::ApprovalDecided(_)) => "approval_decided",
        Some(Kind::TaskUsage(_)) => "task_usage",
        Some(Kind::BudgetExhausted(_)) => "budget_exhausted",
        None => "unknown",
    }
}
