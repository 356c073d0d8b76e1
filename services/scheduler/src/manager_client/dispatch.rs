//! Dispatching tasks: the tasks being dispatched at the same moment (a
//! claim batch's, all the runners' woken by one notification) go to the
//! manager together as `DispatchTasks` calls, split by size; each answer
//! comes back as where the task stands (`RemoteTask`).

use std::convert::Infallible;
use std::time::Duration;

use prost::Message;
use shepherd_platform::batch::{BatchLimits, Batcher};
use shepherd_proto::agentmanager::v1 as pb;
use uuid::Uuid;

use super::connection::{Client, request};
use super::decode::{RemoteTask, remote_task};
use super::error::ManagerError;
use crate::model::{TaskFields, ToolPolicy};

/// Most tasks per `DispatchTasks` call (the manager's limit).
const MAX_DISPATCH_BATCH: usize = 256;
/// Most encoded bytes of tasks per `DispatchTasks` call, well under the
/// manager's message limit (4 MiB by default); a bigger task goes alone.
const MAX_DISPATCH_BYTES: usize = 1024 * 1024;

/// An attempt of a task, as the agent will receive it.
#[derive(Debug, Clone)]
pub(crate) struct OutgoingTask {
    pub agent: Uuid,
    pub task_id: String,
    pub attempt: u32,
    pub workflow_id: Uuid,
    pub workflow_name: String,
    /// The rendered template (text).
    pub prompt: String,
    /// The template rendered for /bin/sh (fields through the environment).
    pub script: String,
    pub fields: TaskFields,
    /// How long the attempt may run.
    pub timeout: Duration,
    pub tool_policy: ToolPolicy,
}

impl From<OutgoingTask> for pb::DispatchTaskRequest {
    fn from(task: OutgoingTask) -> Self {
        let fields = task.fields;
        let spec = pb::TaskSpec {
            prompt: task.prompt.clone(),
            shell_script: task.script,
            title: fields.title,
            body: fields.body,
            url: fields.url,
            labels: fields.labels,
            metadata: fields.metadata.into_iter().collect(),
            workflow_id: task.workflow_id.to_string(),
            workflow_name: task.workflow_name,
            allowed_tools: task.tool_policy.allowed,
            denied_tools: task.tool_policy.denied,
            ask_tools: task.tool_policy.ask,
        };
        pb::DispatchTaskRequest {
            agent_id: task.agent.to_string(),
            task_id: task.task_id,
            // For agents that read only bytes: the prompt, as text.
            payload: task.prompt.into_bytes(),
            // Sent in a call of its own batch, so the task's trace goes
            // explicitly: the caller's span (the runner's dispatch).
            trace_context: shepherd_platform::telemetry::propagation::current_map(),
            attempt: task.attempt,
            spec: Some(spec),
            timeout: prost_types::Duration::try_from(task.timeout).ok(),
        }
    }
}

/// Dispatches wait here to be sent together.
pub(super) type Dispatches =
    Batcher<pb::DispatchTaskRequest, Result<RemoteTask, ManagerError>, Infallible>;

/// Sends the dispatches waiting together as `DispatchTasks` calls (split
/// by size), several calls at once so that a slow one holds up few.
pub(super) fn dispatch_batcher(client: Client) -> Dispatches {
    let limits = BatchLimits {
        max_items: MAX_DISPATCH_BATCH,
        max_in_flight: 4,
        ..BatchLimits::default()
    };
    Batcher::spawn(limits, move |tasks| {
        let client = client.clone();
        async move {
            let calls = chunks_by_size(tasks, MAX_DISPATCH_BYTES)
                .into_iter()
                .map(|chunk| dispatch_chunk(client.clone(), chunk));
            let answers = futures_util::future::join_all(calls).await;
            Ok(answers.into_iter().flatten().collect())
        }
    })
}

/// One `DispatchTasks` call: one answer per task, in order (all the same
/// error when the call itself failed).
async fn dispatch_chunk(
    mut client: Client,
    tasks: Vec<pb::DispatchTaskRequest>,
) -> Vec<Result<RemoteTask, ManagerError>> {
    let count = tasks.len();
    let request = request(pb::DispatchTasksRequest { tasks });
    let results = match client.dispatch_tasks(request).await {
        Ok(response) => response.into_inner().results,
        Err(status) => return vec![Err(ManagerError::from(status)); count],
    };
    if results.len() != count {
        let wrong = ManagerError::Unavailable(format!(
            "dispatched {count} tasks, got {} answers",
            results.len()
        ));
        return vec![Err(wrong); count];
    }
    results.into_iter().map(dispatch_answer).collect()
}

fn dispatch_answer(result: pb::DispatchTaskResult) -> Result<RemoteTask, ManagerError> {
    match result.result {
        Some(pb::dispatch_task_result::Result::Dispatched(response)) => {
            let (state, outcome) = (response.state(), response.outcome());
            Ok(remote_task(
                state,
                response.attempt,
                outcome,
                response.output,
            ))
        }
        Some(pb::dispatch_task_result::Result::Error(error)) => Err(ManagerError::from(
            tonic::Status::new(tonic::Code::from(error.code), error.message),
        )),
        None => Err(ManagerError::Unavailable(
            "the agent-manager answered a dispatch with nothing".into(),
        )),
    }
}

/// Splits `tasks`, in order, into runs of at most `max_bytes` encoded (a
/// bigger task makes a run of its own).
fn chunks_by_size(
    tasks: Vec<pb::DispatchTaskRequest>,
    max_bytes: usize,
) -> Vec<Vec<pb::DispatchTaskRequest>> {
    let mut chunks: Vec<Vec<pb::DispatchTaskRequest>> = Vec::new();
    let mut bytes = 0;
    for task in tasks {
        let size = task.encoded_len();
        match chunks.last_mut() {
            Some(chunk) if bytes + size <= max_bytes => chunk.push(task),
            _ => {
                chunks.push(vec![task]);
                bytes = 0;
            }
        }
        bytes += size;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, payload_bytes: usize) -> pb::DispatchTaskRequest {
        pb::DispatchTaskRequest {
            task_id: id.into(),
            payload: vec![b'x'; payload_bytes],
            ..Default::default()
        }
    }

    /// Tasks keep their order; a call holds what fits, and a task bigger
    /// than a call's budget goes alone.
    #[test]
    fn dispatch_calls_are_split_by_size_in_order() {
        let tasks = vec![
            task("a", 400),
            task("b", 400),
            task("c", 400),
            task("big", 5000),
            task("d", 10),
        ];
        let chunks = chunks_by_size(tasks, 1000);
        let ids: Vec<Vec<&str>> = chunks
            .iter()
            .map(|chunk| chunk.iter().map(|t| t.task_id.as_str()).collect())
            .collect();
        assert_eq!(ids, vec![vec!["a", "b"], vec!["c"], vec!["big"], vec!["d"]]);
        assert!(chunks_by_size(Vec::new(), 1000).is_empty());
    }

    /// An error answered for one task is the error DispatchTask would have
    /// returned: refusals stay refusals, the rest is "unavailable".
    #[test]
    fn a_batch_error_maps_like_a_call_error() {
        let error = |code: tonic::Code| pb::DispatchTaskResult {
            result: Some(pb::dispatch_task_result::Result::Error(
                pb::DispatchTaskError {
                    code: code as i32,
                    message: "why".into(),
                },
            )),
        };
        assert!(matches!(
            dispatch_answer(error(tonic::Code::FailedPrecondition)),
            Err(ManagerError::Refused(message)) if message == "why"
        ));
        assert!(matches!(
            dispatch_answer(error(tonic::Code::Unavailable)),
            Err(ManagerError::Unavailable(_))
        ));
        assert!(matches!(
            dispatch_answer(pb::DispatchTaskResult { result: None }),
            Err(ManagerError::Unavailable(_))
        ));
    }
}
