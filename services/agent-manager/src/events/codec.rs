//! Events as the log stores them and the wire carries them: one codec.

use std::time::SystemTime;

use shepherd_proto::agentmanager::v1::{self as pb, AgentEvent, agent_event};
use uuid::Uuid;

use super::Event;
use crate::model::approval::{Answer, Approval, ApprovalState};
use crate::model::task::TaskOutcome;

pub(super) fn new_event(agent_id: Uuid, generation: u64, kind: agent_event::Kind) -> AgentEvent {
    AgentEvent {
        sequence: 0,
        agent_id: agent_id.to_string(),
        generation,
        time: Some(SystemTime::now().into()),
        kind: Some(kind),
    }
}

/// An event as the log stores it.
pub(super) fn encode(event: Event) -> agent_event::Kind {
    use agent_event::Kind;
    match event {
        Event::Created { name } => Kind::Created(pb::AgentCreated { name }),
        Event::Started { pid } => Kind::Started(pb::AgentStarted { pid }),
        Event::Ready => Kind::Ready(pb::AgentReady {}),
        Event::Disconnected { reason } => Kind::Disconnected(pb::AgentDisconnected { reason }),
        Event::Exited {
            code,
            signal,
            reason,
        } => Kind::Exited(pb::AgentExited {
            code,
            signal,
            reason: wire_exit_reason(Some(reason)) as i32,
        }),
        Event::Restarted { generation, reason } => {
            Kind::Restarted(pb::AgentRestarted { generation, reason })
        }
        Event::Stopped => Kind::Stopped(pb::AgentStopped {}),
        Event::Deleted => Kind::Deleted(pb::AgentDeleted {}),
        Event::TaskAccepted { task_id } => Kind::TaskAccepted(pb::TaskAccepted { task_id }),
        Event::TaskCompleted {
            task_id,
            outcome,
            output,
            attempt,
        } => Kind::TaskCompleted(pb::TaskCompleted {
            task_id,
            outcome: wire_outcome(outcome) as i32,
            output,
            attempt,
        }),
        Event::TaskLost {
            task_id,
            reason,
            attempt,
        } => Kind::TaskLost(pb::TaskLost {
            task_id,
            reason,
            attempt,
        }),
        Event::TaskProgress {
            task_id,
            attempt,
            message,
            fraction,
            output,
        } => Kind::TaskProgress(pb::TaskProgress {
            task_id,
            attempt,
            message,
            fraction,
            output,
        }),
        Event::ApprovalRequested(approval) => Kind::ApprovalRequested(pb::ApprovalRequested {
            approval: Some(wire_approval(&approval)),
        }),
        Event::ApprovalDecided(approval) => Kind::ApprovalDecided(pb::ApprovalDecided {
            approval: Some(wire_approval(&approval)),
        }),
        Event::TaskUsage {
            task_id,
            attempt,
            input_tokens,
            output_tokens,
            cost,
        } => Kind::TaskUsage(pb::TaskUsage {
            task_id,
            attempt,
            input_tokens,
            output_tokens,
            cost,
        }),
        Event::BudgetExhausted {
            workflow_id,
            summary,
            approval_id,
            grace,
        } => Kind::BudgetExhausted(pb::BudgetExhausted {
            workflow_id,
            summary,
            approval_id: approval_id.to_string(),
            grace: prost_types::Duration::try_from(grace).ok(),
        }),
    }
}

/// What the courier passes to an agent's session when one of its budgets
/// is spent: the `BudgetSpent` a `BudgetExhausted` event says.
pub(crate) fn budget_spent(event: &AgentEvent) -> Option<(Uuid, crate::protocol::ToAgent)> {
    let Some(agent_event::Kind::BudgetExhausted(spent)) = &event.kind else {
        return None;
    };
    Some((
        event.agent_id.parse().ok()?,
        crate::protocol::ToAgent::BudgetSpent {
            workflow_id: spent.workflow_id.clone(),
            summary: spent.summary.clone(),
            grace: spent
                .grace
                .and_then(|grace| std::time::Duration::try_from(grace).ok())
                .unwrap_or_default(),
        },
    ))
}

/// A task outcome as the log (and the API) encode it.
pub fn wire_outcome(outcome: TaskOutcome) -> pb::TaskOutcome {
    match outcome {
        TaskOutcome::Succeeded => pb::TaskOutcome::Succeeded,
        TaskOutcome::Failed => pb::TaskOutcome::Failed,
        TaskOutcome::TimedOut => pb::TaskOutcome::TimedOut,
        TaskOutcome::Cancelled => pb::TaskOutcome::Cancelled,
    }
}

/// The approval an `ApprovalDecided` event carries (its agent and final
/// state), for the couriers that pass decisions to sessions.
pub fn decided_approval(event: &AgentEvent) -> Option<DecidedApproval> {
    let Some(agent_event::Kind::ApprovalDecided(decided)) = &event.kind else {
        return None;
    };
    let approval = decided.approval.as_ref()?;
    Some(DecidedApproval {
        agent_id: approval.agent_id.parse().ok()?,
        answer: Answer {
            request_id: approval.request_id.clone(),
            approval_id: approval.id.clone(),
            state: approval_state_from_wire(approval.state()),
            comment: approval.comment.clone(),
            decided_by: approval.decided_by.clone(),
            digest: approval.digest.clone(),
        },
    })
}

fn approval_state_from_wire(state: pb::ApprovalState) -> ApprovalState {
    match state {
        pb::ApprovalState::Approved => ApprovalState::Approved,
        pb::ApprovalState::Expired => ApprovalState::Expired,
        pb::ApprovalState::Withdrawn => ApprovalState::Withdrawn,
        pb::ApprovalState::Pending => ApprovalState::Pending,
        pb::ApprovalState::Denied | pb::ApprovalState::Unspecified => ApprovalState::Denied,
    }
}

/// An approval state as the log (and the API, and the session) encode it.
pub fn wire_approval_state(state: ApprovalState) -> pb::ApprovalState {
    match state {
        ApprovalState::Pending => pb::ApprovalState::Pending,
        ApprovalState::Approved => pb::ApprovalState::Approved,
        ApprovalState::Denied => pb::ApprovalState::Denied,
        ApprovalState::Expired => pb::ApprovalState::Expired,
        ApprovalState::Withdrawn => pb::ApprovalState::Withdrawn,
    }
}

/// An approval as the log (and the API) encode it.
pub fn wire_approval(approval: &Approval) -> pb::Approval {
    pb::Approval {
        id: approval.id.to_string(),
        agent_id: approval.agent_id.to_string(),
        task_id: approval.task_id.clone(),
        attempt: approval.attempt,
        workflow_id: approval.workflow_id.clone(),
        tool: approval.tool.clone(),
        input: approval.input.clone(),
        reason: approval.reason.clone(),
        state: wire_approval_state(approval.state) as i32,
        comment: approval.comment.clone(),
        decided_by: approval.decided_by.clone(),
        create_time: Some(approval.created_at.into()),
        decide_time: approval.decided_at.map(Into::into),
        expire_time: Some(approval.expires_at.into()),
        request_id: approval.request_id.clone(),
        digest: approval.digest.clone(),
    }
}

/// A decision read back from the log.
pub struct DecidedApproval {
    pub agent_id: Uuid,
    pub answer: Answer,
}

/// An exit reason as the event log (and the API) encode it.
pub fn wire_exit_reason(reason: Option<crate::model::ExitReason>) -> pb::ExitReason {
    use crate::model::ExitReason;
    match reason {
        None => pb::ExitReason::Unspecified,
        Some(ExitReason::Exited) => pb::ExitReason::Exited,
        Some(ExitReason::Killed) => pb::ExitReason::Killed,
        Some(ExitReason::OomKilled) => pb::ExitReason::OomKilled,
        Some(ExitReason::Unknown) => pb::ExitReason::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{KIND_NAMES, kind_name};

    /// `KIND_NAMES` (what watchers may ask for) names every kind once, as
    /// the log stores it.
    #[test]
    fn kind_names_are_the_stored_names_of_every_kind() {
        use agent_event::Kind;
        let kinds = [
            Kind::Created(Default::default()),
            Kind::Started(Default::default()),
            Kind::Ready(Default::default()),
            Kind::Disconnected(Default::default()),
            Kind::Exited(Default::default()),
            Kind::Restarted(Default::default()),
            Kind::Stopped(Default::default()),
            Kind::Deleted(Default::default()),
            Kind::TaskAccepted(Default::default()),
            Kind::TaskCompleted(Default::default()),
            Kind::TaskLost(Default::default()),
            Kind::TaskProgress(Default::default()),
            Kind::ApprovalRequested(Default::default()),
            Kind::ApprovalDecided(Default::default()),
            Kind::TaskUsage(Default::default()),
            Kind::BudgetExhausted(Default::default()),
        ];
        let stored: Vec<&str> = kinds.iter().map(|kind| kind_name(Some(kind))).collect();
        assert_eq!(stored, KIND_NAMES);
    }
}
