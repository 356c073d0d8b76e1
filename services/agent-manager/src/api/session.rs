//! The agent session's wire messages to and from the domain's
//! (`crate::protocol`): translation only.

use prost::Message;
use shepherd_proto::agentmanager::v1::{self as pb, agent_message, manager_message};

use shepherd_platform::text::storable;

use crate::events::wire_approval_state;
use crate::manager::MAX_TASK_ID_LEN;
use crate::model::approval::{Answer, ApprovalAsk};
use crate::protocol::{FromAgent, HeldTask, ToAgent};
use crate::sessions::{MAX_OUTPUT_BYTES, MAX_PROGRESS_MESSAGE_BYTES, MAX_PROGRESS_OUTPUT_BYTES};

pub(super) fn held_task(task: pb::HeldTask) -> HeldTask {
    HeldTask {
        task_id: task.task_id,
        attempt: task.attempt,
        deadline: task
            .deadline
            .and_then(|at| std::time::SystemTime::try_from(at).ok()),
    }
}

/// An agent's message in the domain's words, made safe at this edge: task
/// ids are checked (an id no task could have is refused, and the session
/// ends with the reason), free text is made storable and bounded. Nothing
/// an agent sends can then reach the database in a form it refuses, which
/// would hold back every other agent's events behind it.
pub(super) fn from_agent(message: pb::AgentMessage) -> Result<FromAgent, String> {
    use agent_message::Kind;
    Ok(match message.kind {
        Some(Kind::Heartbeat(_)) => FromAgent::Heartbeat,
        Some(Kind::TaskAccepted(accepted)) => FromAgent::TaskAccepted {
            task_id: task_id("task_accepted.task_id", accepted.task_id)?,
        },
        Some(Kind::TaskCompleted(completed)) => FromAgent::TaskCompleted {
            succeeded: completed.outcome() == pb::TaskOutcome::Succeeded,
            task_id: task_id("task_completed.task_id", completed.task_id)?,
            output: if shepherd_platform::failpoint::hit("manager.agent_text_unchecked") {
                // Tests only: the event writer must cope on its own.
                completed.output
            } else {
                storable(completed.output, MAX_OUTPUT_BYTES)
            },
            attempt: completed.attempt,
        },
        Some(Kind::TaskProgress(progress)) => FromAgent::TaskProgress {
            task_id: task_id("task_progress.task_id", progress.task_id)?,
            attempt: progress.attempt,
            message: storable(progress.message, MAX_PROGRESS_MESSAGE_BYTES),
            fraction: progress.fraction,
            output: storable(progress.output, MAX_PROGRESS_OUTPUT_BYTES),
        },
        // Checked whole by `ApprovalAsk::bounded`, which answers a bad one
        // with a refusal the agent can show.
        Some(Kind::ApprovalRequest(request)) => FromAgent::ApprovalRequest(ApprovalAsk {
            request_id: request.request_id,
            task_id: request.task_id,
            attempt: request.attempt,
            workflow_id: request.workflow_id,
            tool: request.tool,
            input: request.input,
            reason: request.reason,
        }),
        Some(Kind::Usage(usage)) => FromAgent::Usage(crate::protocol::TaskUsage {
            task_id: task_id("usage.task_id", usage.task_id)?,
            attempt: usage.attempt,
            input_tokens: usage.input_tokens.min(crate::protocol::MAX_TOKENS),
            output_tokens: usage.output_tokens.min(crate::protocol::MAX_TOKENS),
            // NaN, infinities and negatives count as nothing; the rest is
            // capped, so sums stay finite.
            cost: if usage.cost.is_finite() {
                usage.cost.clamp(0.0, crate::protocol::MAX_COST)
            } else {
                0.0
            },
        }),
        Some(Kind::Hello(_)) | None => FromAgent::Ignored,
    })
}

/// A task id an agent names: one the manager could have delivered
/// (1-MAX_TASK_ID_LEN bytes, no NUL), or the session's end.
fn task_id(field: &str, id: String) -> Result<String, String> {
    if id.is_empty() || id.len() > MAX_TASK_ID_LEN || id.contains('\0') {
        return Err(format!(
            "{field} must be 1-{MAX_TASK_ID_LEN} bytes without NUL: no task has such an id"
        ));
    }
    Ok(id)
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
        ToAgent::BudgetNotice {
            task_id,
            attempt,
            summary,
            grace,
        } => Kind::BudgetNotice(pb::BudgetNotice {
            task_id,
            attempt,
            summary,
            grace: prost_types::Duration::try_from(grace).ok(),
        }),
        // The session loop expands it into notices and never forwards it;
        // were it to, a heartbeat says nothing wrong.
        ToAgent::BudgetSpent { .. } => Kind::Heartbeat(pb::ManagerHeartbeat {}),
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
        digest: answer.digest,
    }
}

/// A task spec as the manager carries it: encoded, unread.
pub(super) fn encode_spec(spec: pb::TaskSpec) -> Vec<u8> {
    spec.encode_to_vec()
}
