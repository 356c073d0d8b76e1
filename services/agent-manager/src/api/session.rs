//! The agent session's wire messages to and from the domain's
//! (`crate::protocol`): translation only.

use prost::Message;
use shepherd_proto::agentmanager::v1::{self as pb, agent_message, manager_message};

use crate::approvals::{Answer, ApprovalAsk};
use crate::events::wire_approval_state;
use crate::protocol::{FromAgent, HeldTask, ToAgent};

pub(super) fn held_task(task: pb::HeldTask) -> HeldTask {
    HeldTask {
        task_id: task.task_id,
        attempt: task.attempt,
        deadline: task
            .deadline
            .and_then(|at| std::time::SystemTime::try_from(at).ok()),
    }
}

pub(super) fn from_agent(message: pb::AgentMessage) -> FromAgent {
    use agent_message::Kind;
    match message.kind {
        Some(Kind::Heartbeat(_)) => FromAgent::Heartbeat,
        Some(Kind::TaskAccepted(accepted)) => FromAgent::TaskAccepted {
            task_id: accepted.task_id,
        },
        Some(Kind::TaskCompleted(completed)) => FromAgent::TaskCompleted {
            succeeded: completed.outcome() == pb::TaskOutcome::Succeeded,
            task_id: completed.task_id,
            output: completed.output,
            attempt: completed.attempt,
        },
        Some(Kind::TaskProgress(progress)) => FromAgent::TaskProgress {
            task_id: progress.task_id,
            attempt: progress.attempt,
            message: progress.message,
            fraction: progress.fraction,
            output: progress.output,
        },
        Some(Kind::ApprovalRequest(request)) => FromAgent::ApprovalRequest(ApprovalAsk {
            request_id: request.request_id,
            task_id: request.task_id,
            attempt: request.attempt,
            workflow_id: request.workflow_id,
            tool: request.tool,
            input: request.input,
            reason: request.reason,
        }),
        Some(Kind::Hello(_)) | None => FromAgent::Ignored,
    }
}

pub(super) fn to_agent(message: ToAgent) -> pb::ManagerMessage {
    use manager_message::Kind;
    let kind = match message {
        ToAgent::Welcome {
            generation,
            heartbeat_interval,
        } => Kind::Welcome(pb::Welcome {
            generation,
            heartbeat_interval: prost_types::Duration::try_from(heartbeat_interval).ok(),
        }),
        ToAgent::Heartbeat => Kind::Heartbeat(pb::ManagerHeartbeat {}),
        ToAgent::Task(task) => Kind::Task(pb::Task {
            task_id: task.task_id,
            payload: task.payload,
            attempt: task.attempt,
            trace_context: task.trace_context,
            // Encoded by the edge that took it in: it decodes.
            spec: task
                .spec
                .and_then(|bytes| pb::TaskSpec::decode(bytes.as_slice()).ok()),
            deadline: task.deadline.map(Into::into),
        }),
        ToAgent::ReportAck { task_id, attempt } => {
            Kind::ReportAck(pb::ReportAck { task_id, attempt })
        }
        ToAgent::Cancel {
            task_id,
            attempt,
            reason,
        } => Kind::Cancel(pb::Cancel {
            task_id,
            attempt,
            reason,
        }),
        ToAgent::Exit { reason } => Kind::Exit(pb::Exit { reason }),
        ToAgent::ApprovalAnswer(answer) => Kind::ApprovalAnswer(approval_answer(answer)),
    };
    pb::ManagerMessage { kind: Some(kind) }
}

fn approval_answer(answer: Answer) -> pb::ApprovalAnswer {
    pb::ApprovalAnswer {
        request_id: answer.request_id,
        approval_id: answer.approval_id,
        state: wire_approval_state(answer.state) as i32,
        comment: answer.comment,
        decided_by: answer.decided_by,
    }
}

/// A task spec as the manager carries it: encoded, unread.
pub(super) fn encode_spec(spec: pb::TaskSpec) -> Vec<u8> {
    spec.encode_to_vec()
}
