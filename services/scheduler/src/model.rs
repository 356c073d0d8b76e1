//! The scheduler's domain: workflows, their triggers and their tasks.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;

pub mod budget;
mod key;
mod schedule;
mod trigger;
pub use key::{
    ConcurrencyKey, KeyUsage, MAX_KEY_LIMIT, MAX_KEY_NAME, MAX_RATE, MAX_RATE_PERIOD,
    MAX_WORKFLOW_KEYS, MIN_RATE_PERIOD, Rate, check_key_name, check_workflow_keys,
};
pub use schedule::{
    CatchUp, DEFAULT_CATCH_UP_WINDOW, MAX_BACKFILL_TICKS, MAX_CATCH_UP_WINDOW, Overlap,
    SchedulePolicy,
};
pub use trigger::{ChainOn, MAX_CRON, MAX_PERIOD, MIN_INTERVAL, Trigger};

/// How deep a chain may go (a self-chaining workflow stops there).
pub const MAX_CHAIN_DEPTH: u32 = 10;
/// The part of a parent's output a child sees as {{parent.output}}.
pub const MAX_PARENT_OUTPUT_CHARS: usize = 4000;

/// Default and bounds of a workflow's task timeout.
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(3600);
pub const MIN_TASK_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// How failed attempts are retried (see the proto's `RetryPolicy`). Stored
/// as JSON; the SQL functions `scheduler.retries` and
/// `scheduler.retry_delay` read the same field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub jitter: f64,
    pub retry_failed: bool,
    pub retry_timed_out: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 1000,
            max_backoff_ms: 60_000,
            jitter: 0.2,
            retry_failed: false,
            retry_timed_out: true,
        }
    }
}

/// The tools an agent may and may not use for a workflow's tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolPolicy {
    pub allowed: Vec<String>,
    pub denied: Vec<String>,
    /// Tools the agent asks approval for before each use.
    pub ask: Vec<String>,
}

/// Most tools per list, and the longest tool name.
pub const MAX_TOOLS: usize = 100;
pub const MAX_TOOL_LEN: usize = 200;

impl ToolPolicy {
    pub fn validate(&self) -> Result<(), Error> {
        for (field, tools) in [
            ("workflow.tool_policy.allowed_tools", &self.allowed),
            ("workflow.tool_policy.denied_tools", &self.denied),
            ("workflow.tool_policy.ask_tools", &self.ask),
        ] {
            if tools.len() > MAX_TOOLS {
                return Err(Error::invalid(field, format!("at most {MAX_TOOLS} tools")));
            }
            for (index, tool) in tools.iter().enumerate() {
                let printable = tool.chars().all(|c| !c.is_control() && c != ',');
                if tool.is_empty() || tool.len() > MAX_TOOL_LEN || !printable {
                    return Err(Error::invalid(
                        format!("{field}[{index}]"),
                        format!("must be 1-{MAX_TOOL_LEN} printable characters without commas"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Longest retry backoff accepted.
pub const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// One finished attempt of a task.
#[derive(Debug, Clone)]
pub struct TaskAttempt {
    pub attempt: u32,
    pub outcome: String,
    pub error: String,
    pub started_at: Option<SystemTime>,
    pub ended_at: SystemTime,
}

/// How a task's attempt ended, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl TaskEnd {
    /// The final task state it leads to.
    pub fn state(self) -> TaskState {
        match self {
            Self::Succeeded => TaskState::Succeeded,
            Self::Failed => TaskState::Failed,
            Self::TimedOut => TaskState::TimedOut,
            Self::Cancelled => TaskState::Cancelled,
        }
    }
}

/// Longest idempotency key.
pub const MAX_KEY: usize = 128;

#[derive(Debug, Clone)]
pub struct Workflow {
    pub id: Uuid,
    pub name: String,
    pub agent_id: Uuid,
    pub enabled: bool,
    pub trigger: Trigger,
    pub prompt_template: String,
    pub max_concurrency: u32,
    pub max_attempts: u32,
    /// How long an attempt may run.
    pub task_timeout: Duration,
    pub retry: RetryPolicy,
    pub tool_policy: ToolPolicy,
    /// The concurrency keys its tasks hold while they run (sorted).
    pub concurrency_keys: Vec<String>,
    /// Paused: nothing of it is dispatched until it is resumed.
    pub pause: Option<Pause>,
    pub disabled_reason: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// A paused agent: nothing of its workflows is dispatched until it is
/// resumed (its process runs on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPause {
    pub agent_id: Uuid,
    pub since: SystemTime,
    pub by: String,
    pub reason: String,
}

/// A paused workflow: who paused it, since when, why, and what becomes of
/// the tasks its triggers make meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub since: SystemTime,
    pub by: String,
    pub reason: String,
    pub while_paused: WhilePaused,
}

/// What becomes of a task made while its workflow is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhilePaused {
    /// Recorded as SKIPPED, never run.
    Skip,
    /// Kept pending (at most 1000), run after the resume.
    Queue,
}

impl WhilePaused {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Queue => "queue",
        }
    }

    /// As stored (anything else: skip, the safe side).
    pub fn parse(text: &str) -> Self {
        match text {
            "queue" => Self::Queue,
            _ => Self::Skip,
        }
    }
}

/// Longest pause reason.
pub const MAX_PAUSE_REASON: usize = 1024;
/// Most pending tasks a paused QUEUE workflow keeps (the bound is in
/// migration 0021's trigger; this names it).
pub const MAX_QUEUED_WHILE_PAUSED: usize = 1000;

/// The fields a task carries; the prompt is rendered from them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFields {
    pub title: String,
    pub body: String,
    pub url: String,
    pub labels: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

/// Bounds of a task's fields.
pub const MAX_TITLE: usize = 1024;
pub const MAX_BODY: usize = 64 * 1024;
pub const MAX_URL: usize = 2048;
pub const MAX_LABELS: usize = 100;
pub const MAX_LABEL: usize = 128;
pub const MAX_METADATA: usize = 100;
pub const MAX_METADATA_KEY: usize = 128;
pub const MAX_METADATA_VALUE: usize = 4096;

impl TaskFields {
    /// Checks every field against its bound, naming the first that is not.
    pub fn validate(&self) -> Result<(), Error> {
        use shepherd_platform::validate::text;
        text("fields.title", &self.title, MAX_TITLE)?;
        text("fields.body", &self.body, MAX_BODY)?;
        text("fields.url", &self.url, MAX_URL)?;
        if self.labels.len() > MAX_LABELS {
            return Err(Error::invalid(
                "fields.labels",
                format!("at most {MAX_LABELS} labels"),
            ));
        }
        for (index, label) in self.labels.iter().enumerate() {
            text(&format!("fields.labels[{index}]"), label, MAX_LABEL)?;
        }
        if self.metadata.len() > MAX_METADATA {
            return Err(Error::invalid(
                "fields.metadata",
                format!("at most {MAX_METADATA} entries"),
            ));
        }
        for (key, value) in &self.metadata {
            if key.is_empty() {
                return Err(Error::invalid("fields.metadata", "keys must not be empty"));
            }
            text("fields.metadata key", key, MAX_METADATA_KEY)?;
            text("fields.metadata value", value, MAX_METADATA_VALUE)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Dispatched,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// Made while its workflow was paused (SKIP, or a full queue): never run.
    Skipped,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Dispatched => "dispatched",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }

    /// Whether the task is over (nothing will change it any more).
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Dispatched)
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Dispatched,
            Self::Succeeded,
            Self::Failed,
            Self::TimedOut,
            Self::Cancelled,
            Self::Skipped,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub workflow_id: Uuid,
    pub idempotency_key: String,
    pub state: TaskState,
    pub fields: TaskFields,
    pub prompt: String,
    pub attempts: u32,
    pub output: String,
    pub last_error: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    /// Out of attempts after retryable failures.
    pub dead_letter: bool,
    /// A retry waiting for its backoff.
    pub not_before: Option<SystemTime>,
    /// When its current (or last) attempt was dispatched.
    pub dispatched_at: Option<SystemTime>,
    /// The agent's latest progress on the current attempt: message and
    /// fraction (negative: unknown).
    pub progress: (String, f32),
    /// Finished attempts (filled by `get_task` only).
    pub history: Vec<TaskAttempt>,
    /// The task whose outcome made this one (chaining), and the depth.
    pub parent_task_id: Option<String>,
    pub chain_depth: u32,
    /// Higher first, FIFO among equals (within the workflow and its keys).
    pub priority: i32,
}

/// A task's global id: unique across workflows, and the id the agent sees.
pub fn task_id(workflow: Uuid, key: &str) -> String {
    format!("{workflow}:{key}")
}

/// The workflow a task id belongs to (the inverse of `task_id`).
pub fn workflow_of_task(task_id: &str) -> Option<Uuid> {
    let (workflow, _) = task_id.split_once(':')?;
    Uuid::parse_str(workflow).ok()
}

pub use shepherd_platform::validate::name as validate_name;

pub use shepherd_platform::validate::id as parse_id;

/// Idempotency keys: 1-128 printable characters.
pub fn validate_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY || key.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            "idempotency_key",
            format!("must be 1-{MAX_KEY} printable characters (or empty to generate one)"),
        ));
    }
    Ok(())
}

/// What a new task runs: its template rendered as the prompt (text, with
/// the fields' values) and as the script for /bin/sh (fields referred to
/// through the environment), and how long an attempt may take.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub prompt: String,
    pub script: String,
    pub timeout: std::time::Duration,
    /// The workflow's tool policy when the task was created.
    pub tool_policy: ToolPolicy,
    /// Higher first (0 unless the trigger said otherwise).
    pub priority: i32,
}

/// What a workflow's runner is doing (a value the runner, the diagnosis and
/// the API share; the runner itself lives in `runner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunnerState {
    WaitingForAgent,
    Running,
    Stopped,
    /// Another replica holds the workflow's lease and runs it.
    Standby,
    /// Running but unable to make progress (the reason says why).
    Stalled,
}

/// Most entries in each filter and in the mapping, and their lengths.
pub(crate) const MAX_FILTERS: usize = 32;
pub(crate) const MAX_FILTER_LEN: usize = 100;
pub(crate) const MAX_MAPPINGS: usize = 32;
pub(crate) const MAX_POINTER_LEN: usize = 512;

/// A workflow's webhook trigger (the secret is stored apart from it, and
/// never returned but once).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookTrigger {
    /// Only these events; empty: any.
    pub events: Vec<String>,
    /// Only these JSON `action`s; empty: any.
    pub actions: Vec<String>,
    /// Task field -> JSON pointer into the body.
    pub mapping: BTreeMap<String, String>,
}

impl WebhookTrigger {
    pub fn validate(&self) -> Result<(), Error> {
        for (field, values) in [
            ("workflow.trigger.webhook.events", &self.events),
            ("workflow.trigger.webhook.actions", &self.actions),
        ] {
            if values.len() > MAX_FILTERS
                || values.iter().any(|v| {
                    v.is_empty() || v.len() > MAX_FILTER_LEN || v.chars().any(char::is_control)
                })
            {
                return Err(Error::invalid(
                    field,
                    format!(
                        "at most {MAX_FILTERS} entries, each 1-{MAX_FILTER_LEN} printable characters"
                    ),
                ));
            }
        }
        if self.mapping.len() > MAX_MAPPINGS {
            return Err(Error::invalid(
                "workflow.trigger.webhook.mapping",
                format!("at most {MAX_MAPPINGS} entries"),
            ));
        }
        for (field, pointer) in &self.mapping {
            let known = matches!(field.as_str(), "title" | "body" | "url" | "labels")
                || field
                    .strip_prefix("metadata.")
                    .is_some_and(|key| !key.is_empty() && key.len() <= MAX_METADATA_KEY);
            if !known {
                return Err(Error::invalid(
                    "workflow.trigger.webhook.mapping",
                    format!(
                        "{} is not a task field; use title, body, url, labels or metadata.KEY",
                        shepherd_platform::validate::quote(field)
                    ),
                ));
            }
            if !(pointer.is_empty() || pointer.starts_with('/')) || pointer.len() > MAX_POINTER_LEN
            {
                return Err(Error::invalid(
                    format!("workflow.trigger.webhook.mapping[{field}]"),
                    format!(
                        "must be a JSON pointer (\"\" or starting with '/', at most {MAX_POINTER_LEN} bytes), e.g. /issue/title"
                    ),
                ));
            }
        }
        Ok(())
    }
}
