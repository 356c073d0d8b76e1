//! A task as the agent's handler sees it: its data, its progress line, its
//! approvals, and the result the handler returns.

use std::collections::HashMap;
use std::future::Future;

use shepherd_proto::agentmanager::v1::{AgentMessage, agent_message};
use tokio_util::sync::CancellationToken;

use crate::approvals::Approver;
use crate::budget::Budget;
use crate::decision::ApprovalDecision;
use crate::ledger::Ledger;
use crate::result::TaskResult;

/// A task delivered to the agent.
#[derive(Clone, Debug)]
pub struct IncomingTask {
    pub task_id: String,
    pub payload: Vec<u8>,
    pub attempt: u32,
    /// W3C trace context (`traceparent`, `tracestate`) of the dispatch.
    pub trace_context: HashMap<String, String>,
    /// The task as data, when the dispatcher sent it (the scheduler does).
    pub spec: Option<TaskSpec>,
    /// When the manager will cancel the task (its timeout), if ever.
    pub deadline: Option<std::time::SystemTime>,
    /// Cancelled when the manager asks the agent to stop this task (its
    /// deadline passed, or someone cancelled it). A handler must then stop
    /// what it started and return soon: an agent that has not reported the
    /// task within the manager's grace period is restarted.
    pub cancel: CancellationToken,
    /// Reports progress and output while the task runs (WatchTasks shows
    /// them).
    pub progress: Progress,
    /// Asks for approval before using a tool on the workflow's `ask` list
    /// (see [`IncomingTask::ask_approval`]).
    pub approver: Approver,
    /// Says when a budget the task runs under is spent: wrap up (see
    /// [`IncomingTask::report_usage`]).
    pub budget: Budget,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("task_id", &self.task_id)
            .finish()
    }
}

/// A running task's line back to whoever watches it: a status message, a
/// fraction done, chunks of output. Best effort: what is sent while no
/// session is open is dropped (the task's final report never is).
#[derive(Clone)]
pub struct Progress {
    pub(crate) task_id: String,
    pub(crate) ledger: Ledger,
}

impl Progress {
    /// A short status message (at most 1 KiB is kept) and how far along the
    /// task is, from 0 to 1, if known.
    pub async fn report(&self, message: impl Into<String>, fraction: Option<f32>) {
        self.send(message.into(), fraction.unwrap_or(-1.0), String::new())
            .await;
    }

    /// Adds to what the task used: tokens in and out, and cost in the units
    /// its budgets count. The totals of the attempt go to the manager (and
    /// again on every new session while the task runs), which logs them
    /// (`TaskUsage`) for the scheduler's budgets.
    pub async fn report_usage(&self, input_tokens: u64, output_tokens: u64, cost: f64) {
        self.ledger.accept(&self.task_id).await;
        if let Some((message, session)) =
            self.ledger
                .add_usage(&self.task_id, input_tokens, output_tokens, cost)
        {
            let _ = session.send(message).await;
        }
    }

    /// A chunk of the task's output (at most 16 KiB per chunk is kept).
    pub async fn output(&self, chunk: impl Into<String>) {
        self.send(String::new(), -1.0, chunk.into()).await;
    }

    async fn send(&self, message: String, fraction: f32, output: String) {
        self.ledger.accept(&self.task_id).await;
        let Some((attempt, session)) = self.ledger.progress_route(&self.task_id) else {
            return;
        };
        let progress = AgentMessage {
            kind: Some(agent_message::Kind::TaskProgress(
                shepherd_proto::agentmanager::v1::TaskProgress {
                    task_id: self.task_id.clone(),
                    attempt,
                    message,
                    fraction,
                    output,
                },
            )),
        };
        let _ = session.send(progress).await;
    }
}

/// A task as structured data. Pass its fields to whatever runs the task
/// as data (environment, stdin), never pasted into a command line: see
/// [`IncomingTask::env`].
#[derive(Clone, Debug, Default)]
pub struct TaskSpec {
    /// The workflow's template rendered with the fields: text (a prompt).
    pub prompt: String,
    /// The template rendered for /bin/sh, referring to the fields only
    /// through the variables of [`IncomingTask::env`].
    pub shell_script: String,
    pub title: String,
    pub body: String,
    pub url: String,
    pub labels: Vec<String>,
    pub metadata: HashMap<String, String>,
    pub workflow_id: String,
    pub workflow_name: String,
    /// The workflow's tool policy: what the agent may and may not use,
    /// and what it must ask approval for first.
    pub allowed_tools: Vec<String>,
    pub denied_tools: Vec<String>,
    pub ask_tools: Vec<String>,
}

impl IncomingTask {
    /// Asks a person for approval to use `tool` (with `input`, summarised,
    /// for `reason`) and waits for the decision: the task's approval is
    /// durable at the manager and survives reconnects and manager restarts.
    /// A cancelled task's request is withdrawn.
    pub async fn ask_approval(
        &self,
        tool: impl Into<String>,
        input: impl Into<String>,
        reason: impl Into<String>,
    ) -> ApprovalDecision {
        self.approver.ask(tool, input, reason).await
    }

    /// Adds to what the task used (see [`Progress::report_usage`]).
    pub async fn report_usage(&self, input_tokens: u64, output_tokens: u64, cost: f64) {
        self.progress
            .report_usage(input_tokens, output_tokens, cost)
            .await;
    }

    /// The task's `SHEPHERD_TASK_*` / `SHEPHERD_WORKFLOW_*` environment:
    /// id, attempt, and (with a spec) title, body, url, labels
    /// (comma-separated), every metadata key, the workflow, and the tool
    /// policy (`SHEPHERD_ALLOWED_TOOLS`, `SHEPHERD_DENIED_TOOLS`).
    pub fn env(&self) -> Vec<(String, String)> {
        use shepherd_proto::task_env;
        let mut env = vec![
            (task_env::ID.to_owned(), self.task_id.clone()),
            (task_env::ATTEMPT.to_owned(), self.attempt.to_string()),
        ];
        if let Some(spec) = &self.spec {
            env.extend([
                (task_env::TITLE.to_owned(), spec.title.clone()),
                (task_env::BODY.to_owned(), spec.body.clone()),
                (task_env::URL.to_owned(), spec.url.clone()),
                (task_env::LABELS.to_owned(), spec.labels.join(",")),
                (task_env::WORKFLOW_ID.to_owned(), spec.workflow_id.clone()),
                (
                    task_env::WORKFLOW_NAME.to_owned(),
                    spec.workflow_name.clone(),
                ),
                (
                    task_env::ALLOWED_TOOLS.to_owned(),
                    spec.allowed_tools.join(","),
                ),
                (
                    task_env::DENIED_TOOLS.to_owned(),
                    spec.denied_tools.join(","),
                ),
                (task_env::ASK_TOOLS.to_owned(), spec.ask_tools.join(",")),
            ]);
            env.extend(
                spec.metadata
                    .iter()
                    .map(|(key, value)| (task_env::metadata(key), value.clone())),
            );
        }
        env
    }
}

impl From<shepherd_proto::agentmanager::v1::TaskSpec> for TaskSpec {
    fn from(spec: shepherd_proto::agentmanager::v1::TaskSpec) -> Self {
        Self {
            prompt: spec.prompt,
            shell_script: spec.shell_script,
            title: spec.title,
            body: spec.body,
            url: spec.url,
            labels: spec.labels,
            metadata: spec.metadata,
            workflow_id: spec.workflow_id,
            workflow_name: spec.workflow_name,
            allowed_tools: spec.allowed_tools,
            denied_tools: spec.denied_tools,
            ask_tools: spec.ask_tools,
        }
    }
}

/// Your agent's work. Called once per task, concurrently for concurrent
/// tasks.
pub trait TaskHandler: Send + Sync + 'static {
    fn handle(&self, task: IncomingTask) -> impl Future<Output = TaskResult> + Send;
}
