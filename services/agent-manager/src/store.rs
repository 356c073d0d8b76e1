//! SQL for the `agent_manager` schema. Every query of the service lives here;
//! the rest of the crate speaks in domain types.

use std::collections::BTreeMap;

use shepherd_platform::db::{DbPool, Migration};
use uuid::Uuid;

use crate::model::AgentStatus;

mod agent_row;
mod agents;
mod approvals;
mod log;
mod nodes;
mod tasks;

pub(crate) use agents::AgentChange;
pub(crate) use approvals::SHEPHERD;
pub(crate) use log::LogBatch;
pub(crate) use nodes::{Fence, NodeRecord, Placement, Renewal, join, moved};
pub(crate) use tasks::Completion;

pub(crate) const SCHEMA: &str = "agent_manager";

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "task_output",
        sql: include_str!("../migrations/0002_task_output.sql"),
    },
    Migration {
        version: 3,
        name: "live_restore",
        sql: include_str!("../migrations/0003_live_restore.sql"),
    },
    Migration {
        version: 4,
        name: "exit_reason",
        sql: include_str!("../migrations/0004_exit_reason.sql"),
    },
    Migration {
        version: 5,
        name: "external_agents",
        sql: include_str!("../migrations/0005_external_agents.sql"),
    },
    Migration {
        version: 6,
        name: "nodes",
        sql: include_str!("../migrations/0006_nodes.sql"),
    },
    Migration {
        version: 7,
        name: "approvals",
        sql: include_str!("../migrations/0007_approvals.sql"),
    },
    Migration {
        version: 8,
        name: "approval_digest",
        sql: include_str!("../migrations/0008_approval_digest.sql"),
    },
    Migration {
        version: 9,
        name: "audit",
        sql: include_str!("../migrations/0009_audit.sql"),
    },
];

/// Names one process for its lifetime: a pid alone may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub started_at: i64,
}

/// What was recorded about an agent's running process.
#[derive(Debug, Clone)]
pub struct LaunchedProcess {
    pub identity: ProcessIdentity,
    pub token_hash: Vec<u8>,
}

/// One event ready to be stored: the sequence is assigned by `append_events`.
pub struct EventRow {
    pub agent_id: Uuid,
    pub kind: &'static str,
    pub payload: Vec<u8>,
}

/// The outcome of trying to take a task for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskClaim {
    /// The caller must deliver this attempt.
    Deliver { attempt: u32 },
    /// The task is in flight or finished: nothing to deliver.
    Existing {
        state: TaskState,
        attempt: u32,
        /// How a completed task ended, and its output.
        outcome: Option<TaskOutcome>,
        output: String,
    },
}

pub(crate) use crate::model::task::{TaskOutcome, TaskState};

/// A stored task as `BatchGetTaskStates` reports it.
#[derive(Debug, Clone)]
pub struct StoredTask {
    pub task_id: String,
    pub agent_id: Uuid,
    pub session_id: Uuid,
    pub state: TaskState,
    pub attempt: u32,
    pub outcome: Option<TaskOutcome>,
    pub output: String,
}

/// A task that was in flight and is now lost.
#[derive(Debug, Clone)]
pub struct LostTask {
    pub task_id: String,
    pub agent_id: Uuid,
    pub generation: u64,
    pub attempt: u32,
}

/// Filters of `list_agents`.
#[derive(Debug, Default, Clone)]
pub struct AgentFilter {
    pub status: Option<AgentStatus>,
    pub labels: BTreeMap<String, String>,
    /// Keyset pagination: only agents with a greater id (ids are UUIDv7, so
    /// id order is creation order).
    pub after: Option<Uuid>,
}

#[derive(Clone)]
pub struct Store {
    pool: DbPool,
    /// The batch pool: the task batchers' and the event writer's.
    batches: DbPool,
    tasks: tasks::TaskBatches,
    /// This manager's node: writes about agents are fenced by it.
    fence: Fence,
}

impl Store {
    /// Needs a running Tokio runtime: it starts the task table's batchers,
    /// on `batches` (see `db::connect_for_batches`).
    pub fn new(pool: DbPool, batches: &DbPool, fence: Fence) -> Self {
        Self {
            tasks: tasks::TaskBatches::spawn(batches),
            batches: batches.clone(),
            pool,
            fence,
        }
    }
}
