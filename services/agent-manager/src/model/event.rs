//! What happens to an agent, in the domain's words: the entries of the
//! event log. `events.rs` encodes them for storage and watchers (as the
//! wire's `AgentEvent`, the log's one encoding); nothing else in the
//! domain sees that encoding.

use crate::model::ExitReason;
use crate::model::approval::Approval;
use crate::model::task::TaskOutcome;

#[derive(Debug, Clone)]
pub enum Event {
    Created {
        name: String,
    },
    /// A process was launched (pid 0: an instance the manager did not
    /// launch, an external agent's or a Pod's).
    Started {
        pid: i32,
    },
    Ready,
    Disconnected {
        reason: String,
    },
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        reason: ExitReason,
    },
    Restarted {
        generation: u64,
        reason: String,
    },
    Stopped,
    Deleted,
    TaskAccepted {
        task_id: String,
    },
    TaskCompleted {
        task_id: String,
        outcome: TaskOutcome,
        output: String,
        attempt: u32,
    },
    TaskLost {
        task_id: String,
        reason: String,
        attempt: u32,
    },
    /// Informational: a running task's status line, fraction done (negative:
    /// unknown) and output chunk.
    TaskProgress {
        task_id: String,
        attempt: u32,
        message: String,
        fraction: f32,
        output: String,
    },
    ApprovalRequested(Approval),
    /// Decided, expired or withdrawn: its final state.
    ApprovalDecided(Approval),
    /// A running attempt's usage so far (totals), as the agent reported it.
    TaskUsage {
        task_id: String,
        attempt: u32,
        input_tokens: u64,
        output_tokens: u64,
        cost: f64,
    },
    /// A budget of the agent (or of its workflow) is spent; the approval
    /// asks whether to go on past it.
    BudgetExhausted {
        workflow_id: String,
        summary: String,
        approval_id: uuid::Uuid,
        grace: std::time::Duration,
    },
}
