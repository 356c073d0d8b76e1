//! What a handler reports for a task.

use crate::TaskOutcome;

/// What a handler reports for a task.
#[derive(Clone, Debug)]
pub struct TaskResult {
    pub outcome: TaskOutcome,
    pub output: String,
}

impl TaskResult {
    pub fn success(output: impl Into<String>) -> Self {
        Self {
            outcome: TaskOutcome::Succeeded,
            output: output.into(),
        }
    }

    pub fn failure(output: impl Into<String>) -> Self {
        Self {
            outcome: TaskOutcome::Failed,
            output: output.into(),
        }
    }
}
