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
}

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
