//! Translation between the wire types and the scheduler's model, with the
//! input validation that names the offending field.

use std::time::Duration;

use shepherd_proto::scheduler::v1 as pb;

use crate::error::{Error, Result};
use crate::model::{self, Task, TaskFields, TaskState, Trigger, Workflow};
use crate::runner::{RunnerInfo, RunnerState};
use crate::service::UpdateMask;
use crate::store::{NewWorkflow, RunnerWorkflow};
use crate::template;

mod budget;
mod trigger;
pub(crate) use budget::{budget_from, budget_to, subject};
use trigger::{trigger_from, trigger_to};

pub(crate) const DEFAULT_TEMPLATE: &str = "{{body}}";
pub(crate) const DEFAULT_ATTEMPTS: u32 = 3;
pub(crate) const MAX_CONCURRENCY: u32 = 1000;
pub(crate) const MAX_ATTEMPTS: u32 = 100;

pub(crate) fn new_workflow(workflow: Option<pb::Workflow>) -> Result<NewWorkflow> {
    let workflow = workflow.ok_or_else(|| Error::invalid("workflow", "is required"))?;
    model::validate_name("workflow.name", &workflow.name)?;
    let agent_id = model::parse_id("workflow.agent_id", &workflow.agent_id, "agent")?;
    let trigger = trigger_from(workflow.trigger)?;
    let prompt_template = template_from(workflow.prompt_template)?;
    let max_concurrency = concurrency(workflow.max_concurrency)?;
    trigger.check_concurrency(max_concurrency)?;
    Ok(NewWorkflow {
        name: workflow.name,
        agent_id,
        enabled: workflow.enabled,
        trigger,
        prompt_template,
        max_concurrency,
        max_attempts: attempts(workflow.max_attempts)?,
        task_timeout: task_timeout(workflow.task_timeout)?,
        retry: retry_from(workflow.retry)?,
        tool_policy: tool_policy_from(workflow.tool_policy)?,
        concurrency_keys: model::check_workflow_keys(&workflow.concurrency_keys)?,
    })
}

fn tool_policy_from(policy: Option<pb::ToolPolicy>) -> Result<model::ToolPolicy> {
    let policy = policy.unwrap_or_default();
    let policy = model::ToolPolicy {
        allowed: policy.allowed_tools,
        denied: policy.denied_tools,
        ask: policy.ask_tools,
    };
    policy.validate()?;
    Ok(policy)
}

/// A retry policy from the wire; unset fields take their defaults.
fn retry_from(policy: Option<pb::RetryPolicy>) -> Result<model::RetryPolicy> {
    let defaults = model::RetryPolicy::default();
    let Some(policy) = policy else {
        return Ok(defaults);
    };
    let backoff = |field: &str, value: Option<prost_types::Duration>, default: u64| {
        let Some(value) = value else {
            return Ok(default);
        };
        let duration = shepherd_platform::validate::non_negative_duration(value)
            .ok_or(())
            .map_err(|_| Error::invalid(field, "must be a non-negative duration"))?;
        if duration > model::MAX_BACKOFF {
            return Err(Error::invalid(field, "must be at most 1 day"));
        }
        Ok(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    };
    let initial = backoff(
        "workflow.retry.initial_backoff",
        policy.initial_backoff,
        defaults.initial_backoff_ms,
    )?;
    let max = backoff(
        "workflow.retry.max_backoff",
        policy.max_backoff,
        defaults.max_backoff_ms.max(initial),
    )?;
    if max < initial {
        return Err(Error::invalid(
            "workflow.retry.max_backoff",
            "must not be shorter than initial_backoff",
        ));
    }
    let jitter = policy.jitter.unwrap_or(defaults.jitter);
    if !(0.0..=1.0).contains(&jitter) {
        return Err(Error::invalid(
            "workflow.retry.jitter",
            "must be between 0 and 1",
        ));
    }
    Ok(model::RetryPolicy {
        initial_backoff_ms: initial,
        max_backoff_ms: max,
        jitter,
        retry_failed: policy.retry_failed,
        retry_timed_out: policy.retry_timed_out.unwrap_or(defaults.retry_timed_out),
    })
}

fn retry_to(policy: &model::RetryPolicy) -> pb::RetryPolicy {
    let duration = |ms: u64| prost_types::Duration::try_from(Duration::from_millis(ms)).ok();
    pb::RetryPolicy {
        initial_backoff: duration(policy.initial_backoff_ms),
        max_backoff: duration(policy.max_backoff_ms),
        jitter: Some(policy.jitter),
        retry_failed: policy.retry_failed,
        retry_timed_out: Some(policy.retry_timed_out),
    }
}

/// A workflow's task timeout: unset means the default (1 hour).
fn task_timeout(value: Option<prost_types::Duration>) -> Result<Duration> {
    const FIELD: &str = "workflow.task_timeout";
    let Some(value) = value else {
        return Ok(model::DEFAULT_TASK_TIMEOUT);
    };
    let timeout = shepherd_platform::validate::non_negative_duration(value)
        .ok_or(())
        .map_err(|_| Error::invalid(FIELD, "must be a positive duration"))?;
    if !(model::MIN_TASK_TIMEOUT..=model::MAX_TASK_TIMEOUT).contains(&timeout) {
        return Err(Error::invalid(FIELD, "must be between 1s and 30 days"));
    }
    Ok(timeout)
}

/// A trigger's timeout: shortens the workflow's (None: the workflow's).
pub(crate) fn trigger_timeout(value: Option<prost_types::Duration>) -> Result<Option<Duration>> {
    const FIELD: &str = "timeout";
    let Some(value) = value else {
        return Ok(None);
    };
    let timeout = shepherd_platform::validate::non_negative_duration(value)
        .ok_or(())
        .map_err(|_| Error::invalid(FIELD, "must be a positive duration"))?;
    if timeout < model::MIN_TASK_TIMEOUT {
        return Err(Error::invalid(FIELD, "must be at least 1s"));
    }
    Ok(Some(timeout))
}

/// The patch and mask of an UpdateWorkflow request.
pub(crate) fn update(request: pb::UpdateWorkflowRequest) -> Result<(Workflow, UpdateMask)> {
    let patch = request
        .workflow
        .ok_or_else(|| Error::invalid("workflow", "is required"))?;
    let id = model::parse_id("workflow.id", &patch.id, "workflow")?;
    let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::invalid(
            "update_mask",
            "is required: list the fields to change (name, enabled, trigger, prompt_template, max_concurrency, max_attempts, task_timeout, retry, tool_policy, concurrency_keys)",
        ));
    }
    let mut mask = UpdateMask::default();
    for path in &paths {
        match path.as_str() {
            "name" => mask.name = true,
            "enabled" => mask.enabled = true,
            "trigger" => mask.trigger = true,
            "prompt_template" => mask.prompt_template = true,
            "max_concurrency" => mask.max_concurrency = true,
            "max_attempts" => mask.max_attempts = true,
            "task_timeout" => mask.task_timeout = true,
            "retry" => mask.retry = true,
            "tool_policy" => mask.tool_policy = true,
            "concurrency_keys" => mask.concurrency_keys = true,
            other => {
                return Err(Error::invalid(
                    "update_mask",
                    format!(
                        "{} cannot be updated; use name, enabled, trigger, prompt_template, max_concurrency, max_attempts, task_timeout, retry, tool_policy or concurrency_keys",
                        shepherd_platform::validate::quote(other)
                    ),
                ));
            }
        }
    }
    if mask.name {
        model::validate_name("workflow.name", &patch.name)?;
    }
    let trigger = if mask.trigger {
        trigger_from(patch.trigger)?
    } else {
        Trigger::Manual
    };
    let prompt_template = if mask.prompt_template {
        template_from(patch.prompt_template)?
    } else {
        String::new()
    };
    let workflow = Workflow {
        id,
        name: patch.name,
        agent_id: uuid::Uuid::nil(),
        enabled: patch.enabled,
        trigger,
        prompt_template,
        max_concurrency: if mask.max_concurrency {
            concurrency(patch.max_concurrency)?
        } else {
            1
        },
        max_attempts: if mask.max_attempts {
            attempts(patch.max_attempts)?
        } else {
            DEFAULT_ATTEMPTS
        },
        task_timeout: if mask.task_timeout {
            task_timeout(patch.task_timeout)?
        } else {
            model::DEFAULT_TASK_TIMEOUT
        },
        retry: if mask.retry {
            retry_from(patch.retry)?
        } else {
            model::RetryPolicy::default()
        },
        tool_policy: if mask.tool_policy {
            tool_policy_from(patch.tool_policy)?
        } else {
            model::ToolPolicy::default()
        },
        concurrency_keys: if mask.concurrency_keys {
            model::check_workflow_keys(&patch.concurrency_keys)?
        } else {
            Vec::new()
        },
        pause: None,
        disabled_reason: String::new(),
        created_at: std::time::SystemTime::UNIX_EPOCH,
        updated_at: std::time::SystemTime::UNIX_EPOCH,
    };
    Ok((workflow, mask))
}

/// Longest prompt template.
pub(crate) const MAX_TEMPLATE: usize = 64 * 1024;

fn template_from(template: String) -> Result<String> {
    shepherd_platform::validate::text("workflow.prompt_template", &template, MAX_TEMPLATE)?;
    let template = if template.is_empty() {
        DEFAULT_TEMPLATE.to_owned()
    } else {
        template
    };
    template::validate(&template)?;
    Ok(template)
}

fn concurrency(value: u32) -> Result<u32> {
    match value {
        0 => Ok(1),
        1..=MAX_CONCURRENCY => Ok(value),
        _ => Err(Error::invalid(
            "workflow.max_concurrency",
            format!("{value} is out of range; use 1-{MAX_CONCURRENCY}, or 0 for the default (1)"),
        )),
    }
}

fn attempts(value: u32) -> Result<u32> {
    match value {
        0 => Ok(DEFAULT_ATTEMPTS),
        1..=MAX_ATTEMPTS => Ok(value),
        _ => Err(Error::invalid(
            "workflow.max_attempts",
            format!(
                "{value} is out of range; use 1-{MAX_ATTEMPTS}, or 0 for the default ({DEFAULT_ATTEMPTS})"
            ),
        )),
    }
}

pub(crate) fn workflow(workflow: Workflow) -> pb::Workflow {
    pb::Workflow {
        id: workflow.id.to_string(),
        trigger: Some(trigger_to(&workflow.trigger)),
        name: workflow.name,
        agent_id: workflow.agent_id.to_string(),
        enabled: workflow.enabled,
        prompt_template: workflow.prompt_template,
        max_concurrency: workflow.max_concurrency,
        max_attempts: workflow.max_attempts,
        disabled_reason: workflow.disabled_reason,
        create_time: Some(workflow.created_at.into()),
        update_time: Some(workflow.updated_at.into()),
        task_timeout: prost_types::Duration::try_from(workflow.task_timeout).ok(),
        retry: Some(retry_to(&workflow.retry)),
        tool_policy: Some(pb::ToolPolicy {
            allowed_tools: workflow.tool_policy.allowed,
            denied_tools: workflow.tool_policy.denied,
            ask_tools: workflow.tool_policy.ask,
        }),
        concurrency_keys: workflow.concurrency_keys,
        pause: workflow.pause.map(pause_to),
    }
}

/// A backfill's range: both ends given, in order, not in the future.
pub(crate) fn backfill_range(
    from: Option<prost_types::Timestamp>,
    to: Option<prost_types::Timestamp>,
) -> Result<(std::time::SystemTime, std::time::SystemTime)> {
    use shepherd_platform::validate::time;
    let from = time(
        "from",
        from.ok_or_else(|| Error::invalid("from", "is required"))?,
    )?;
    let to = time("to", to.ok_or_else(|| Error::invalid("to", "is required"))?)?;
    if from > to {
        return Err(Error::invalid("to", "must not be before from"));
    }
    if to > std::time::SystemTime::now() {
        return Err(Error::invalid(
            "to",
            "must not be in the future (a backfill makes the tasks of past ticks)",
        ));
    }
    Ok((from, to))
}

pub(crate) fn pause_to(pause: model::Pause) -> pb::WorkflowPause {
    pb::WorkflowPause {
        since: Some(pause.since.into()),
        by: pause.by,
        reason: pause.reason,
        while_paused: match pause.while_paused {
            model::WhilePaused::Skip => pb::WhilePaused::Skip,
            model::WhilePaused::Queue => pb::WhilePaused::Queue,
        } as i32,
    }
}

/// A PauseWorkflow request's reason and mode, checked.
/// A pause's reason (of a workflow or an agent), checked.
pub(crate) fn pause_reason(reason: String) -> Result<String> {
    if reason.len() > model::MAX_PAUSE_REASON || reason.contains('\0') {
        return Err(Error::invalid(
            "reason",
            format!(
                "must be at most {} bytes, without NUL",
                model::MAX_PAUSE_REASON
            ),
        ));
    }
    Ok(reason)
}

pub(crate) fn agent_pause_to(pause: model::AgentPause) -> pb::AgentPause {
    pb::AgentPause {
        agent_id: pause.agent_id.to_string(),
        since: Some(pause.since.into()),
        by: pause.by,
        reason: pause.reason,
    }
}

pub(crate) fn pause_from(
    reason: String,
    while_paused: i32,
) -> Result<(String, model::WhilePaused)> {
    let reason = pause_reason(reason)?;
    let mode = match pb::WhilePaused::try_from(while_paused) {
        Ok(pb::WhilePaused::Unspecified | pb::WhilePaused::Skip) => model::WhilePaused::Skip,
        Ok(pb::WhilePaused::Queue) => model::WhilePaused::Queue,
        Err(_) => {
            return Err(Error::invalid(
                "while_paused",
                format!("{while_paused} is not SKIP or QUEUE"),
            ));
        }
    };
    Ok((reason, mode))
}

pub(crate) fn fields(fields: Option<pb::TaskFields>) -> Result<TaskFields> {
    let fields = fields.unwrap_or_default();
    let fields = TaskFields {
        title: fields.title,
        body: fields.body,
        url: fields.url,
        labels: fields.labels,
        metadata: fields.metadata.into_iter().collect(),
    };
    fields.validate()?;
    Ok(fields)
}

pub(crate) fn task(task: Task) -> pb::Task {
    pb::Task {
        parent_task_id: task.parent_task_id.unwrap_or_default(),
        chain_depth: task.chain_depth,
        priority: task.priority,
        id: task.id,
        workflow_id: task.workflow_id.to_string(),
        idempotency_key: task.idempotency_key,
        state: task_state(task.state) as i32,
        fields: Some(pb::TaskFields {
            title: task.fields.title,
            body: task.fields.body,
            url: task.fields.url,
            labels: task.fields.labels,
            metadata: task.fields.metadata.into_iter().collect(),
        }),
        prompt: task.prompt,
        progress: (!task.progress.0.is_empty() || task.progress.1 >= 0.0).then(|| {
            pb::TaskProgress {
                message: task.progress.0.clone(),
                fraction: task.progress.1,
                output: String::new(),
            }
        }),
        attempts: task.attempts,
        output: task.output,
        last_error: task.last_error,
        create_time: Some(task.created_at.into()),
        update_time: Some(task.updated_at.into()),
        history: task
            .history
            .into_iter()
            .map(|attempt| pb::TaskAttempt {
                attempt: attempt.attempt,
                outcome: attempt.outcome,
                error: attempt.error,
                start_time: attempt.started_at.map(Into::into),
                end_time: Some(attempt.ended_at.into()),
            })
            .collect(),
        dead_letter: task.dead_letter,
        not_before: task.not_before.map(Into::into),
    }
}

fn task_state(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Dispatched => pb::TaskState::Dispatched,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::TimedOut => pb::TaskState::TimedOut,
        TaskState::Cancelled => pb::TaskState::Cancelled,
        TaskState::Skipped => pb::TaskState::Skipped,
    }
}

pub(crate) fn task_state_filter(value: i32) -> Result<Option<TaskState>> {
    match pb::TaskState::try_from(value) {
        Ok(pb::TaskState::Unspecified) => Ok(None),
        Ok(pb::TaskState::Pending) => Ok(Some(TaskState::Pending)),
        Ok(pb::TaskState::Dispatched) => Ok(Some(TaskState::Dispatched)),
        Ok(pb::TaskState::Succeeded) => Ok(Some(TaskState::Succeeded)),
        Ok(pb::TaskState::Failed) => Ok(Some(TaskState::Failed)),
        Ok(pb::TaskState::TimedOut) => Ok(Some(TaskState::TimedOut)),
        Ok(pb::TaskState::Cancelled) => Ok(Some(TaskState::Cancelled)),
        Ok(pb::TaskState::Skipped) => Ok(Some(TaskState::Skipped)),
        Err(_) => Err(Error::invalid(
            "state",
            format!("{value} is not a known task state"),
        )),
    }
}

fn runner_state(state: RunnerState) -> pb::RunnerState {
    match state {
        RunnerState::WaitingForAgent => pb::RunnerState::WaitingForAgent,
        RunnerState::Running => pb::RunnerState::Running,
        RunnerState::Stopped => pb::RunnerState::Stopped,
        RunnerState::Standby => pb::RunnerState::Standby,
        RunnerState::Stalled => pb::RunnerState::Stalled,
    }
}

pub(crate) fn diagnosis(diagnosis: crate::service::Diagnosis) -> pb::WorkflowDiagnosis {
    use crate::explain::Verdict;
    let facts = diagnosis.facts;
    let duration = |d: std::time::Duration| prost_types::Duration::try_from(d).ok();
    pb::WorkflowDiagnosis {
        workflow_id: diagnosis.workflow.id.to_string(),
        verdict: match diagnosis.verdict {
            Verdict::Running => pb::Verdict::Running,
            Verdict::Disabled => pb::Verdict::Disabled,
            Verdict::AgentStopped => pb::Verdict::AgentStopped,
            Verdict::AgentCrashLooping => pb::Verdict::AgentCrashLooping,
            Verdict::AgentNotReady => pb::Verdict::AgentNotReady,
            Verdict::LeaseElsewhere => pb::Verdict::LeaseElsewhere,
            Verdict::WaitingOnApproval => pb::Verdict::WaitingOnApproval,
            Verdict::ConcurrencyFull => pb::Verdict::ConcurrencyFull,
            Verdict::WaitingOnKey => pb::Verdict::WaitingOnKey,
            Verdict::Paused => pb::Verdict::Paused,
            Verdict::BudgetExhausted => pb::Verdict::BudgetExhausted,
            Verdict::RateLimited => pb::Verdict::RateLimited,
            Verdict::NothingDue => pb::Verdict::NothingDue,
            Verdict::Stalled => pb::Verdict::Stalled,
        } as i32,
        summary: diagnosis.summary,
        enabled: facts.enabled,
        disabled_reason: facts.disabled_reason,
        agent_status: facts.agent.status,
        agent_status_message: facts.agent.message,
        agent_since: facts.agent.since.map(Into::into),
        agent_generation: facts.agent.generation,
        runner_state: runner_state(facts.runner_state) as i32,
        runner_reason: facts.runner_reason,
        lease_term: facts
            .lease_holder
            .as_ref()
            .map_or(0, |(_, term)| u64::try_from(*term).unwrap_or(0)),
        lease_holder: facts
            .lease_holder
            .map(|(holder, _)| holder)
            .unwrap_or_default(),
        max_concurrency: facts.max_concurrency,
        in_flight: facts
            .in_flight
            .into_iter()
            .map(|task| pb::InFlightTask {
                task_id: task.task_id,
                attempt: task.attempt,
                age: duration(task.age),
            })
            .collect(),
        pending: facts.pending,
        due: facts.due,
        oldest_pending_age: facts
            .oldest_pending
            .as_ref()
            .and_then(|(_, age)| duration(*age)),
        oldest_pending_task_id: facts.oldest_pending.map(|(id, _)| id).unwrap_or_default(),
        next_fire: facts.next_fire.map(Into::into),
        last_error: facts.last_error,
        pause: diagnosis.workflow.pause.clone().map(pause_to),
        keys: facts
            .keys
            .into_iter()
            .map(|key| pb::KeyHolders {
                name: key.name,
                max_running: key.max_running,
                running: key.running,
                holders: key.holders,
            })
            .collect(),
        pending_approvals: facts
            .approvals
            .into_iter()
            .map(|approval| pb::PendingApproval {
                approval_id: approval.approval_id,
                task_id: approval.task_id,
                tool: approval.tool,
                age: duration(approval.age),
            })
            .collect(),
    }
}

pub(crate) fn runner(workflow: &RunnerWorkflow, info: RunnerInfo) -> pb::Runner {
    pb::Runner {
        workflow_id: workflow.id.to_string(),
        agent_id: workflow.agent_id.to_string(),
        state: runner_state(info.state) as i32,
        reason: info.reason,
        since: Some(info.since.into()),
        starts: info.starts,
    }
}

pub(crate) fn watch_item(item: crate::task_watch::WatchItem) -> pb::WatchTasksResponse {
    use crate::task_watch::WatchItem;
    use pb::watch_tasks_response::Kind;
    let kind = match item {
        WatchItem::Change(change) => Kind::Event(pb::TaskEvent {
            cursor: change.cursor.to_string(),
            task_id: change.task_id,
            workflow_id: change.workflow_id.to_string(),
            state: task_state(change.state) as i32,
            attempt: change.attempt,
            progress: change
                .progress
                .map(|(message, fraction, output)| pb::TaskProgress {
                    message,
                    fraction,
                    output,
                }),
            time: Some(change.time.into()),
        }),
        WatchItem::Heartbeat(cursor) => Kind::Heartbeat(pb::TaskWatchHeartbeat {
            cursor: cursor.to_string(),
        }),
    };
    pb::WatchTasksResponse { kind: Some(kind) }
}

/// Largest task priority, either way.
pub(crate) const MAX_PRIORITY: i32 = 1_000_000;

/// A trigger's priority, checked.
pub(crate) fn priority(priority: i32) -> Result<i32> {
    if priority.unsigned_abs() > MAX_PRIORITY.unsigned_abs() {
        return Err(Error::invalid(
            "priority",
            format!("is out of range (-{MAX_PRIORITY} to {MAX_PRIORITY})"),
        ));
    }
    Ok(priority)
}

pub(crate) fn key_from(key: Option<pb::ConcurrencyKey>) -> Result<model::ConcurrencyKey> {
    let key = key.ok_or_else(|| Error::invalid("key", "is required"))?;
    let period = match key.rate_period {
        Some(period) => Some(
            shepherd_platform::validate::non_negative_duration(period).ok_or_else(|| {
                Error::invalid("key.rate_period", "must be a non-negative duration")
            })?,
        ),
        None => None,
    };
    let rate = match (key.rate_limit, period) {
        (0, None) => None,
        (starts, period) => Some(model::Rate::new(
            starts,
            period.unwrap_or(std::time::Duration::ZERO),
        )?),
    };
    model::ConcurrencyKey::new(&key.name, key.max_running, rate)
}

pub(crate) fn key_to(usage: model::KeyUsage) -> pb::ConcurrencyKey {
    pb::ConcurrencyKey {
        rate_limit: usage.key.rate.map_or(0, |rate| rate.starts),
        rate_period: usage
            .key
            .rate
            .and_then(|rate| prost_types::Duration::try_from(rate.period).ok()),
        name: usage.key.name,
        max_running: usage.key.max_running,
        running: usage.running,
        waiting: usage.waiting,
        workflows: usage.workflows,
    }
}
