//! Every bound the agent-manager puts on its input, listed from the
//! constants its validators use. The README's limits table is these rows
//! (and the scheduler's); `tests::the_readme_lists_exactly_these_limits`
//! keeps them identical.

use shepherd_platform::limits::{Limit, bytes, duration};
use shepherd_platform::validate::MAX_NAME;

use crate::api::{
    DEFAULT_PAGE, MAX_DISPATCH_BATCH, MAX_HELD_TASKS, MAX_LOG_LINES, MAX_PAGE, MAX_TASK_STATES,
};
use crate::containment::{MAX_CPU_CORES, MIN_MEMORY_BYTES};
use crate::manager::{MAX_PAYLOAD_BYTES, MAX_TASK_ID_LEN};
use crate::model::{
    MAX_ARG_BYTES, MAX_ARGS, MAX_ENTRIES, MAX_KEY_BYTES, MAX_LABEL_KEY, MAX_LABEL_VALUE,
    MAX_RESTART_DURATION, MAX_VALUE_BYTES, MIN_RESTART_BACKOFF, MIN_RESTART_WINDOW, RESERVED_ENV,
};
use crate::sessions::{MAX_OUTPUT_BYTES, MAX_PROGRESS_MESSAGE_BYTES, MAX_PROGRESS_OUTPUT_BYTES};
use crate::supervisor::MAX_INSTANCE_ID;

pub fn all() -> Vec<Limit> {
    vec![
        Limit::new(
            "agent.name",
            format!("1-{MAX_NAME} characters of a-z, 0-9 and '-', starting with a letter"),
        ),
        Limit::new(
            "agent.command",
            "an executable file: an absolute path, or a bare name found in the manager's PATH",
        ),
        Limit::new(
            "agent.args",
            format!(
                "at most {MAX_ARGS}, each at most {}, no NUL",
                bytes(MAX_ARG_BYTES)
            ),
        ),
        Limit::new(
            "agent.limits",
            format!(
                "memory_bytes 0 (none) or at least {}; cpu_cores 0 (none) or 0.001-{MAX_CPU_CORES}; max_processes 0 (none) or more; each refused (FAILED_PRECONDITION) where the containment mode cannot enforce it",
                bytes(MIN_MEMORY_BYTES as usize)
            ),
        ),
        Limit::new(
            "hello.instance_id",
            format!("external agents: 1-{MAX_INSTANCE_ID} bytes"),
        ),
        Limit::new(
            "agent.env",
            format!(
                "at most {MAX_ENTRIES} variables; names 1-{MAX_KEY_BYTES} bytes without '=' or NUL, none of {}; values at most {}, no NUL",
                RESERVED_ENV.join(", "),
                bytes(MAX_VALUE_BYTES)
            ),
        ),
        Limit::new(
            "agent.labels",
            format!(
                "at most {MAX_ENTRIES}; keys 1-{MAX_LABEL_KEY} bytes, values at most {MAX_LABEL_VALUE} bytes, no NUL"
            ),
        ),
        Limit::new("agent.working_dir", "an existing directory"),
        Limit::new(
            "agent.restart_policy",
            format!(
                "window {} to {}; initial_backoff at least {}; max_backoff at most {} and not below initial_backoff",
                duration(MIN_RESTART_WINDOW),
                duration(MAX_RESTART_DURATION),
                duration(MIN_RESTART_BACKOFF),
                duration(MAX_RESTART_DURATION)
            ),
        ),
        Limit::new(
            "ListAgents page_size",
            format!("1-{MAX_PAGE} (0: {DEFAULT_PAGE})"),
        ),
        Limit::new(
            "GetAgentLogs tail_lines",
            format!("1-{MAX_LOG_LINES} (0: 100)"),
        ),
        Limit::new(
            "DispatchTask, CancelTask task_id",
            format!("1-{MAX_TASK_ID_LEN} bytes, no NUL"),
        ),
        Limit::new(
            "DispatchTask payload",
            format!("at most {}", bytes(MAX_PAYLOAD_BYTES)),
        ),
        Limit::new(
            "DispatchTasks tasks",
            format!("1-{MAX_DISPATCH_BATCH} tasks, each as DispatchTask takes it"),
        ),
        Limit::new(
            "BatchGetTaskStates task_ids",
            format!("1-{MAX_TASK_STATES} ids, each 1-{MAX_TASK_ID_LEN} bytes, no NUL"),
        ),
        Limit::new(
            "WatchAgentEvents after_sequence",
            "at most the latest sequence (OUT_OF_RANGE past it)",
        ),
        Limit::new(
            "WatchAgentEvents kinds",
            format!(
                "names of `AgentEvent.kind` cases ({}; INVALID_ARGUMENT otherwise)",
                crate::events::KIND_NAMES.join(", ")
            ),
        ),
        Limit::new("Hello.held_tasks", format!("at most {MAX_HELD_TASKS}")),
        Limit::new(
            "TaskCompleted.output",
            format!(
                "kept up to {} (cut at a character boundary)",
                bytes(MAX_OUTPUT_BYTES)
            ),
        ),
        Limit::new(
            "TaskProgress",
            format!(
                "message kept up to {}, output chunk up to {}",
                bytes(MAX_PROGRESS_MESSAGE_BYTES),
                bytes(MAX_PROGRESS_OUTPUT_BYTES)
            ),
        ),
        Limit::new(
            "TaskUsage",
            "totals of the attempt; tokens each way at most 1e12, cost 0 to 1e12 (NaN, infinite or negative: 0; more: the most)".to_owned(),
        ),
        Limit::new(
            "ReportBudgetExhausted",
            format!(
                "key 1-{} printable characters; summary 1 byte to {}; grace 0 to {}",
                crate::model::approval::MAX_REQUEST_ID_LEN,
                bytes(crate::model::approval::MAX_INPUT_BYTES),
                shepherd_platform::limits::duration(crate::approvals::MAX_BUDGET_GRACE)
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_lists_exactly_these_limits() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .expect("README.md");
        shepherd_platform::limits::assert_readme_lists(&readme, "agent-manager", &super::all());
    }
}
