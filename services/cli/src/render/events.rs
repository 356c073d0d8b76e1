//! Agent events as they stream: one line, or one JSON object per line.

use serde_json::{Value, json};
use shepherd_proto::agentmanager::v1::{self as am, agent_event::Kind};
use shepherd_proto::short_name as short;

use super::approvals::approval_json;
use super::format::time;
use crate::cli::Output;

/// An event's kind and its details.
pub(crate) fn event_kind(event: &am::AgentEvent) -> (&'static str, Value) {
    match &event.kind {
        Some(Kind::Created(e)) => ("created", json!({ "name": e.name })),
        Some(Kind::Started(e)) => ("started", json!({ "pid": e.pid })),
        Some(Kind::Ready(_)) => ("ready", json!({})),
        Some(Kind::Disconnected(e)) => ("disconnected", json!({ "reason": e.reason })),
        Some(Kind::Exited(e)) => (
            "exited",
            json!({ "code": e.code, "signal": e.signal, "reason": short(e.reason().as_str_name(), "EXIT_REASON_") }),
        ),
        Some(Kind::Restarted(e)) => (
            "restarted",
            json!({ "generation": e.generation, "reason": e.reason }),
        ),
        Some(Kind::Stopped(_)) => ("stopped", json!({})),
        Some(Kind::Deleted(_)) => ("deleted", json!({})),
        Some(Kind::TaskAccepted(e)) => ("task_accepted", json!({ "task_id": e.task_id })),
        Some(Kind::TaskCompleted(e)) => (
            "task_completed",
            json!({
                "task_id": e.task_id,
                "outcome": short(e.outcome().as_str_name(), "TASK_OUTCOME_"),
                "output": e.output,
                "attempt": e.attempt,
            }),
        ),
        Some(Kind::TaskLost(e)) => (
            "task_lost",
            json!({ "task_id": e.task_id, "reason": e.reason, "attempt": e.attempt }),
        ),
        Some(Kind::TaskProgress(e)) => (
            "task_progress",
            json!({
                "task_id": e.task_id,
                "attempt": e.attempt,
                "message": e.message,
                "fraction": e.fraction,
                "output": e.output,
            }),
        ),
        Some(Kind::ApprovalRequested(e)) => {
            ("approval_requested", approval_json(e.approval.as_ref()))
        }
        Some(Kind::ApprovalDecided(e)) => ("approval_decided", approval_json(e.approval.as_ref())),
        Some(Kind::TaskUsage(e)) => (
            "task_usage",
            json!({
                "task_id": e.task_id,
                "attempt": e.attempt,
                "input_tokens": e.input_tokens,
                "output_tokens": e.output_tokens,
                "cost": e.cost,
            }),
        ),
        Some(Kind::BudgetExhausted(e)) => (
            "budget_exhausted",
            json!({
                "workflow_id": e.workflow_id,
                "summary": e.summary,
                "approval_id": e.approval_id,
            }),
        ),
        None => ("unknown", json!({})),
    }
}

/// One event: a line, or one JSON object per line (NDJSON).
pub(crate) fn event(output: Output, event: &am::AgentEvent) {
    let (kind, details) = event_kind(event);
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "sequence": event.sequence,
                "time": time(event.time.as_ref()),
                "agent_id": event.agent_id,
                "generation": event.generation,
                "kind": kind,
                "details": details,
            })
        ),
        Output::Table => println!(
            "{:>6}  {}  {}  gen {}  {kind:<14} {details}",
            event.sequence,
            time(event.time.as_ref()),
            event.agent_id,
            event.generation
        ),
    }
}
