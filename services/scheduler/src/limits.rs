//! Every bound the scheduler puts on its input, listed from the constants
//! its validators use. The README's limits table is these rows (and the
//! agent-manager's); `tests::the_readme_lists_exactly_these_limits` keeps
//! them identical.

use shepherd_platform::limits::{Limit, bytes, duration};
use shepherd_platform::validate::MAX_NAME;

use crate::api::convert::{
    DEFAULT_ATTEMPTS, MAX_ATTEMPTS, MAX_CONCURRENCY, MAX_PRIORITY, MAX_TEMPLATE,
};
use crate::api::{DEFAULT_PAGE, MAX_PAGE, MAX_TASK_ID};
use crate::model::budget::{DEFAULT_GRACE, MAX_BUDGET_TASKS, MAX_GRACE, MAX_ROLLING, MIN_ROLLING};
use crate::model::{
    MAX_BACKFILL_TICKS, MAX_CATCH_UP_WINDOW, MAX_PAUSE_REASON, MAX_QUEUED_WHILE_PAUSED,
};
use crate::model::{
    MAX_BACKOFF, MAX_BODY, MAX_CHAIN_DEPTH, MAX_CRON, MAX_KEY, MAX_LABEL, MAX_LABELS, MAX_METADATA,
    MAX_METADATA_KEY, MAX_METADATA_VALUE, MAX_PERIOD, MAX_TASK_TIMEOUT, MAX_TITLE, MAX_TOOL_LEN,
    MAX_TOOLS, MAX_URL, MIN_INTERVAL, MIN_TASK_TIMEOUT,
};
use crate::model::{MAX_FILTER_LEN, MAX_FILTERS, MAX_MAPPINGS, MAX_POINTER_LEN};
use crate::model::{
    MAX_KEY_LIMIT, MAX_KEY_NAME, MAX_RATE, MAX_RATE_PERIOD, MAX_WORKFLOW_KEYS, MIN_RATE_PERIOD,
};

pub fn all() -> Vec<Limit> {
    vec![
        Limit::new(
            "workflow.name",
            format!("1-{MAX_NAME} characters of a-z, 0-9 and '-', starting with a letter"),
        ),
        Limit::new(
            "workflow.prompt_template",
            format!("at most {}, no NUL", bytes(MAX_TEMPLATE)),
        ),
        Limit::new(
            "workflow.trigger.webhook.events, .actions",
            format!("at most {MAX_FILTERS} each, 1-{MAX_FILTER_LEN} printable characters"),
        ),
        Limit::new(
            "workflow.trigger.webhook.mapping",
            format!(
                "at most {MAX_MAPPINGS} entries: title, body, url, labels or metadata.KEY to a JSON pointer of at most {}",
                bytes(MAX_POINTER_LEN)
            ),
        ),
        Limit::new(
            "chain depth",
            format!(
                "at most {MAX_CHAIN_DEPTH} chained tasks; the next is recorded FAILED, not run"
            ),
        ),
        Limit::new(
            "webhook body",
            "WEBHOOK_MAX_BODY_BYTES (default 1 MiB; over it: 413)".to_owned(),
        ),
        Limit::new(
            "workflow.max_concurrency",
            format!("1-{MAX_CONCURRENCY} (0: 1)"),
        ),
        Limit::new(
            "workflow.max_attempts",
            format!("1-{MAX_ATTEMPTS} (0: {DEFAULT_ATTEMPTS})"),
        ),
        Limit::new(
            "workflow.task_timeout",
            format!(
                "{} to {}",
                duration(MIN_TASK_TIMEOUT),
                duration(MAX_TASK_TIMEOUT)
            ),
        ),
        Limit::new(
            "workflow.trigger",
            format!(
                "interval period {} to {}; delay at most {}; cron expression at most {MAX_CRON} bytes",
                duration(MIN_INTERVAL),
                duration(MAX_PERIOD),
                duration(MAX_PERIOD)
            ),
        ),
        Limit::new(
            "workflow.trigger policy",
            format!(
                "catch_up_window 1s to {} (unset: 1 day); overlap BUFFER_ONE only with max_concurrency 1",
                duration(MAX_CATCH_UP_WINDOW)
            ),
        ),
        Limit::new(
            "budget",
            format!(
                "one per workflow and per agent; max_tasks at most {MAX_BUDGET_TASKS}, max_task_seconds and max_cost 0 to 1e12, at least one set; rolling {} to {}, or DAY, WEEK, MONTH; grace 0 to {} (unset: {})",
                duration(MIN_ROLLING),
                duration(MAX_ROLLING),
                duration(MAX_GRACE),
                duration(DEFAULT_GRACE)
            ),
        ),
        Limit::new(
            "BackfillWorkflow range",
            format!("at most {MAX_BACKFILL_TICKS} ticks; from not after to; to not in the future"),
        ),
        Limit::new(
            "workflow.retry",
            format!(
                "backoffs at most {}, max_backoff not below initial_backoff; jitter 0 to 1",
                duration(MAX_BACKOFF)
            ),
        ),
        Limit::new(
            "workflow.tool_policy",
            format!(
                "at most {MAX_TOOLS} tools per list, each 1-{MAX_TOOL_LEN} printable characters without commas"
            ),
        ),
        Limit::new(
            "workflow.concurrency_keys",
            format!("at most {MAX_WORKFLOW_KEYS}, each a defined key, named once"),
        ),
        Limit::new(
            "concurrency key name",
            format!(
                "1-{MAX_KEY_NAME} characters of a-z, 0-9 and -_.:/, starting with a letter or digit"
            ),
        ),
        Limit::new("concurrency key max_running", format!("1-{MAX_KEY_LIMIT}")),
        Limit::new(
            "concurrency key rate",
            format!(
                "1-{MAX_RATE} starts per {} to {} (0 and no period: no cap)",
                duration(MIN_RATE_PERIOD),
                duration(MAX_RATE_PERIOD)
            ),
        ),
        Limit::new(
            "PauseWorkflow, PauseAgent reason",
            format!("at most {}, no NUL", bytes(MAX_PAUSE_REASON)),
        ),
        Limit::new(
            "tasks queued while paused",
            format!("at most {MAX_QUEUED_WHILE_PAUSED} pending; the rest are recorded SKIPPED"),
        ),
        Limit::new(
            "TriggerWorkflow priority",
            format!("-{MAX_PRIORITY} to {MAX_PRIORITY} (default 0)"),
        ),
        Limit::new(
            "TriggerWorkflow idempotency_key",
            format!("1-{MAX_KEY} printable characters (empty: generated)"),
        ),
        Limit::new(
            "TriggerWorkflow fields",
            format!(
                "title {}, body {}, url {}; at most {MAX_LABELS} labels of {MAX_LABEL} B; at most {MAX_METADATA} metadata entries, keys {MAX_METADATA_KEY} B, values {}; no NUL",
                bytes(MAX_TITLE),
                bytes(MAX_BODY),
                bytes(MAX_URL),
                bytes(MAX_METADATA_VALUE)
            ),
        ),
        Limit::new(
            "TriggerWorkflow timeout",
            format!(
                "at least {} (shortens the workflow's)",
                duration(MIN_TASK_TIMEOUT)
            ),
        ),
        Limit::new("task_id", format!("1-{MAX_TASK_ID} bytes, no NUL")),
        Limit::new(
            "ListWorkflows, ListTasks page_size",
            format!("1-{MAX_PAGE} (0: {DEFAULT_PAGE})"),
        ),
        Limit::new(
            "WatchTasks after_cursor",
            "empty, or a cursor from an event or heartbeat (\"<xid>.<n>\")",
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
        shepherd_platform::limits::assert_readme_lists(&readme, "scheduler", &super::all());
    }
}
