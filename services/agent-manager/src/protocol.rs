//! The agent session's messages in the domain's words. The gRPC edge
//! (`api::session`) translates the wire's `AgentMessage` / `ManagerMessage`
//! to and from these; the session loop, the supervisor and dispatch speak
//! only these.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::model::approval::{Answer, ApprovalAsk};

/// A task an agent process holds across sessions.
#[derive(Debug, Clone)]
pub(crate) struct HeldTask {
    pub task_id: String,
    pub attempt: u32,
    /// The attempt's deadline as delivered, if it had one.
    pub deadline: Option<SystemTime>,
}

/// What an agent says on its session.
#[derive(Debug, Clone)]
pub(crate) enum FromAgent {
    /// A second hello, or a message this manager does not know: ignored.
    Ignored,
    Heartbeat,
    TaskAccepted {
        task_id: String,
    },
    TaskCompleted {
        task_id: String,
        succeeded: bool,
        output: String,
        /// 0: whatever attempt is in flight on the session.
        attempt: u32,
    },
    TaskProgress {
        task_id: String,
        attempt: u32,
        message: String,
        /// 0 to 1; anything else: unknown.
        fraction: f32,
        output: String,
    },
    /// Not checked yet (`ApprovalAsk::bounded`).
    ApprovalRequest(ApprovalAsk),
    /// A running attempt's usage so far (totals).
    Usage(TaskUsage),
}

/// What an agent reported of a task attempt's usage so far.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskUsage {
    pub task_id: String,
    pub attempt: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Finite, 0 to `MAX_COST` (the edge makes it so).
    pub cost: f64,
}

/// The largest cost, and count of tokens each way, an agent may report for
/// one attempt (more is taken as this much): sums over many attempts stay
/// far inside what the scheduler's columns hold.
pub(crate) const MAX_COST: f64 = 1e12;
pub(crate) const MAX_TOKENS: u64 = 1_000_000_000_000;

/// What the manager says to an agent.
#[derive(Debug, Clone)]
pub(crate) enum ToAgent {
    Welcome {
        generation: u64,
        heartbeat_interval: Duration,
    },
    Heartbeat,
    Task(DeliveredTask),
    /// Its report of this attempt is recorded (or stale): forget it.
    ReportAck {
        task_id: String,
        attempt: u32,
    },
    /// Stop this task and report it.
    Cancel {
        task_id: String,
        attempt: u32,
        reason: String,
    },
    /// Exit (an external agent's restart, stop or delete).
    Exit {
        reason: String,
    },
    ApprovalAnswer(Answer),
    /// A budget of the workflow (all the agent's tasks: empty) is spent:
    /// the session loop tells each task of it that it runs (a
    /// `BudgetNotice` each); never sent as it is.
    BudgetSpent {
        workflow_id: String,
        summary: String,
        grace: Duration,
    },
    /// A budget this task runs under is spent.
    BudgetNotice {
        task_id: String,
        attempt: u32,
        summary: String,
        grace: Duration,
    },
}

/// A task as delivered to the agent.
#[derive(Debug, Clone)]
pub(crate) struct DeliveredTask {
    pub task_id: String,
    pub payload: Vec<u8>,
    pub attempt: u32,
    pub trace_context: HashMap<String, String>,
    /// The dispatcher's task spec, encoded: the manager passes it on
    /// unread.
    pub spec: Option<Vec<u8>>,
    /// The task's workflow as the dispatcher named it (not sent: the
    /// session keeps it for the task's approvals).
    pub workflow_id: String,
    pub deadline: Option<SystemTime>,
}
