//! SQL for the `scheduler` schema. The scheduler never reads the
//! agent-manager's tables: what it knows of agents comes over gRPC.

pub use crate::model::Rendered;
use std::time::SystemTime;

use shepherd_platform::columns::{from_i32, from_json, from_millis, to_i32, to_json, to_millis};
use shepherd_platform::db::{DbPool, Migration};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{Task, TaskAttempt, TaskEnd, TaskFields, TaskState, Trigger, Workflow};

mod agent_pauses;
mod budgets;
mod chains;
mod claim_rows;
mod claims;
mod diagnosis;
mod due;
mod event_cursor;
mod in_flight;
mod keyed_claims;
mod keys;
mod leases;
mod replicas;
mod schedules;
mod task_events;
mod tasks;
mod workflows;

pub use budgets::BudgetView;
pub use claims::{Claim, ClaimRequest};
pub use diagnosis::QueueFacts;
pub use in_flight::{InFlight, InFlightScope, OldestInFlight};
pub use leases::LeaseAcquisition;
pub use replicas::Renewal;
pub use schedules::Backfilled;
pub use task_events::{TaskChange, TaskChanges, TaskCursor, TaskEventFilter};
pub use workflows::RunnerWorkflow;

pub const SCHEMA: &str = "scheduler";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "task_trace_context",
        sql: include_str!("../migrations/0002_task_trace_context.sql"),
    },
    Migration {
        version: 3,
        name: "drop_redundant_task_key",
        sql: include_str!("../migrations/0003_drop_redundant_task_key.sql"),
    },
    Migration {
        version: 4,
        name: "runner_leases",
        sql: include_str!("../migrations/0004_runner_leases.sql"),
    },
    Migration {
        version: 5,
        name: "replicas",
        sql: include_str!("../migrations/0005_replicas.sql"),
    },
    Migration {
        version: 6,
        name: "task_script",
        sql: include_str!("../migrations/0006_task_script.sql"),
    },
    Migration {
        version: 7,
        name: "timeouts_and_cancellation",
        sql: include_str!("../migrations/0007_timeouts_and_cancellation.sql"),
    },
    Migration {
        version: 8,
        name: "retries",
        sql: include_str!("../migrations/0008_retries.sql"),
    },
    Migration {
        version: 9,
        name: "tool_policy",
        sql: include_str!("../migrations/0009_tool_policy.sql"),
    },
    Migration {
        version: 10,
        name: "wakeups",
        sql: include_str!("../migrations/0010_wakeups.sql"),
    },
    Migration {
        version: 11,
        name: "membership_leases",
        sql: include_str!("../migrations/0011_membership_leases.sql"),
    },
    Migration {
        version: 12,
        name: "task_events",
        sql: include_str!("../migrations/0012_task_events.sql"),
    },
    Migration {
        version: 13,
        name: "quiet_task_events",
        sql: include_str!("../migrations/0013_quiet_task_events.sql"),
    },
    Migration {
        version: 14,
        name: "row_task_log",
        sql: include_str!("../migrations/0014_row_task_log.sql"),
    },
    Migration {
        version: 15,
        name: "webhooks",
        sql: include_str!("../migrations/0015_webhooks.sql"),
    },
    Migration {
        version: 16,
        name: "chaining",
        sql: include_str!("../migrations/0016_chaining.sql"),
    },
    Migration {
        version: 17,
        name: "statement_task_log",
        sql: include_str!("../migrations/0017_statement_task_log.sql"),
    },
    Migration {
        version: 18,
        name: "audit",
        sql: include_str!("../migrations/0018_audit.sql"),
    },
    Migration {
        version: 19,
        name: "concurrency_keys",
        sql: include_str!("../migrations/0019_concurrency_keys.sql"),
    },
    Migration {
        version: 20,
        name: "key_rates",
        sql: include_str!("../migrations/0020_key_rates.sql"),
    },
    Migration {
        version: 21,
        name: "pause",
        sql: include_str!("../migrations/0021_pause.sql"),
    },
    Migration {
        version: 22,
        name: "agent_pause",
        sql: include_str!("../migrations/0022_agent_pause.sql"),
    },
    Migration {
        version: 23,
        name: "budgets",
        sql: include_str!("../migrations/0023_budgets.sql"),
    },
    Migration {
        version: 24,
        name: "key_holds",
        sql: include_str!("../migrations/0024_key_holds.sql"),
    },
    Migration {
        version: 25,
        name: "replica_locks",
        sql: include_str!("../migrations/0025_replica_locks.sql"),
    },
];

const WORKFLOW_COLUMNS: &str = "id, name, agent_id, enabled, trigger, prompt_template, \
    max_concurrency, max_attempts, disabled_reason, created_at, updated_at, task_timeout_ms, retry, tool_policy, \
    concurrency_keys, paused_at, paused_by, pause_reason, while_paused";
const TASK_COLUMNS: &str = "id, workflow_id, idempotency_key, state, fields, prompt, attempts, \
    output, last_error, created_at, updated_at, dead_letter, not_before, dispatched_at, \
    progress_message, progress_fraction, parent_task_id, chain_depth, priority";

/// A new workflow, validated.
pub struct NewWorkflow {
    pub name: String,
    pub agent_id: Uuid,
    pub enabled: bool,
    pub trigger: Trigger,
    pub prompt_template: String,
    pub max_concurrency: u32,
    pub max_attempts: u32,
    pub task_timeout: std::time::Duration,
    pub retry: crate::model::RetryPolicy,
    pub tool_policy: crate::model::ToolPolicy,
    /// Checked and sorted (`model::check_workflow_keys`).
    pub concurrency_keys: Vec<String>,
}

/// A task claimed for dispatch.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub prompt: String,
    /// The template rendered for /bin/sh (see `template::render_shell`).
    pub script: String,
    pub fields: TaskFields,
    pub workflow_name: String,
    pub attempts: u32,
    /// How long an attempt may run.
    pub timeout: std::time::Duration,
    pub tool_policy: crate::model::ToolPolicy,
    /// Trace context of the call that created the task.
    pub trace_context: std::collections::HashMap<String, String>,
}

/// A task's reported outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub task_id: String,
    pub attempt: Option<u32>,
    pub end: TaskEnd,
    pub output: String,
}

/// Filters of `list_workflows`.
#[derive(Debug, Default, Clone)]
pub struct WorkflowFilter {
    pub agent_id: Option<Uuid>,
    pub enabled: Option<bool>,
    /// Keyset pagination on id (UUIDv7: creation order).
    pub after: Option<Uuid>,
}

#[derive(Clone)]
pub struct Store {
    pool: DbPool,
    claims: claims::ClaimBatches,
    acquisitions: leases::AcquisitionBatches,
}

impl Store {
    /// Needs a running Tokio runtime: it starts the claim and lease
    /// acquisition batchers, on `batches` (see `db::connect_for_batches`).
    pub fn new(pool: DbPool, batches: &DbPool) -> Self {
        Self {
            claims: claims::ClaimBatches::spawn(batches),
            acquisitions: leases::AcquisitionBatches::spawn(batches),
            pool,
        }
    }
}

async fn task_by_id(client: &shepherd_platform::db::Client, id: &str) -> Result<Task> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM scheduler.tasks WHERE id = $1");
    let row = client
        .query_opt(&client.prepare_cached(&sql).await?, &[&id])
        .await?
        .ok_or_else(|| Error::not_found(format!("task {id:?} not found")))?;
    task_from_row(&row)
}

fn workflow_from_row(row: &Row) -> Result<Workflow> {
    Ok(Workflow {
        id: row.get("id"),
        name: row.get("name"),
        agent_id: row.get("agent_id"),
        enabled: row.get("enabled"),
        trigger: from_json(row.get("trigger"))?,
        prompt_template: row.get("prompt_template"),
        max_concurrency: from_i32(row.get("max_concurrency")),
        max_attempts: from_i32(row.get("max_attempts")),
        disabled_reason: row.get("disabled_reason"),
        task_timeout: from_millis(row.get("task_timeout_ms")),
        retry: from_json(row.get("retry"))?,
        tool_policy: from_json(row.get("tool_policy"))?,
        concurrency_keys: row.get("concurrency_keys"),
        pause: row
            .get::<_, Option<SystemTime>>("paused_at")
            .map(|since| crate::model::Pause {
                since,
                by: row.get("paused_by"),
                reason: row.get("pause_reason"),
                while_paused: crate::model::WhilePaused::parse(row.get("while_paused")),
            }),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

fn task_from_row(row: &Row) -> Result<Task> {
    let state: &str = row.get("state");
    Ok(Task {
        id: row.get("id"),
        workflow_id: row.get("workflow_id"),
        idempotency_key: row.get("idempotency_key"),
        state: TaskState::parse(state)
            .ok_or_else(|| Error::internal(format!("unknown task state {state:?}")))?,
        fields: from_json(row.get("fields"))?,
        prompt: row.get("prompt"),
        attempts: from_i32(row.get("attempts")),
        output: row.get("output"),
        last_error: row.get("last_error"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        dead_letter: row.get("dead_letter"),
        not_before: row.get("not_before"),
        progress: (row.get("progress_message"), row.get("progress_fraction")),
        dispatched_at: row.get("dispatched_at"),
        history: Vec::new(),
        parent_task_id: row.get("parent_task_id"),
        chain_depth: u32::try_from(row.get::<_, i32>("chain_depth")).unwrap_or(0),
        priority: row.get("priority"),
    })
}
