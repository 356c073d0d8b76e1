//! Workflows, their tasks, runners and diagnoses, and task changes as
//! they stream.

use serde_json::{Value, json};
use shepherd_proto::scheduler::v1 as sched;
use shepherd_proto::short_name as short;

use super::format::{Render, shown, time};
use crate::cli::Output;

fn trigger(workflow: &sched::Workflow) -> String {
    use sched::trigger::Kind as T;
    let duration = |d: Option<&prost_types::Duration>| {
        d.and_then(|d| std::time::Duration::try_from(*d).ok())
            .map(|d| humantime::format_duration(d).to_string())
            .unwrap_or_default()
    };
    match workflow.trigger.as_ref().and_then(|t| t.kind.as_ref()) {
        None | Some(T::Manual(_)) => "manual".into(),
        Some(T::Interval(i)) => format!(
            "every {}{}",
            duration(i.period.as_ref()),
            policy(i.policy.as_ref())
        ),
        Some(T::Cron(c)) => format!("cron {}{}", c.expression, policy(c.policy.as_ref())),
        Some(T::Delay(d)) => format!("once after {}", duration(d.delay.as_ref())),
        Some(T::Chain(c)) => format!(
            "after {} of workflow {}",
            match c.on() {
                sched::ChainOn::Unspecified | sched::ChainOn::Succeeded => "success",
                sched::ChainOn::Failed => "failure",
                sched::ChainOn::Any => "any outcome",
            },
            c.parent_workflow_id
        ),
        Some(T::AgentRestart(r)) if r.agent_id.is_empty() => "on its agent's restarts".into(),
        Some(T::AgentRestart(r)) => format!("on restarts of agent {}", r.agent_id),
        Some(T::Webhook(w)) => {
            let mut text = String::from("webhook");
            if !w.events.is_empty() {
                text += &format!(" events={}", w.events.join(","));
            }
            if !w.actions.is_empty() {
                text += &format!(" actions={}", w.actions.join(","));
            }
            if !w.url.is_empty() {
                text += &format!(" {}", w.url);
            }
            text
        }
    }
}

/// A schedule's policy, e.g. "; catch-up all within 6h; overlap skip";
/// nothing for the default one (latest within a day, allow).
fn policy(policy: Option<&sched::SchedulePolicy>) -> String {
    let Some(policy) = policy else {
        return String::new();
    };
    let window = policy
        .catch_up_window
        .and_then(|d| std::time::Duration::try_from(d).ok());
    let default_window = window.is_none_or(|w| w == std::time::Duration::from_secs(24 * 3600));
    if matches!(
        policy.catch_up(),
        sched::CatchUp::Unspecified | sched::CatchUp::Latest
    ) && matches!(
        policy.overlap(),
        sched::Overlap::Unspecified | sched::Overlap::Allow
    ) && default_window
    {
        return String::new();
    }
    let window = window
        .map(|d| humantime::format_duration(d).to_string())
        .unwrap_or_default();
    let catch_up = match policy.catch_up() {
        sched::CatchUp::None => "none".to_owned(),
        sched::CatchUp::All => format!("all within {window}"),
        sched::CatchUp::Unspecified | sched::CatchUp::Latest => format!("latest within {window}"),
    };
    let overlap = match policy.overlap() {
        sched::Overlap::Unspecified | sched::Overlap::Allow => "allow",
        sched::Overlap::Skip => "skip",
        sched::Overlap::BufferOne => "buffer-one",
    };
    format!("; catch-up {catch_up}; overlap {overlap}")
}

impl Render for sched::Workflow {
    fn headers() -> &'static [&'static str] {
        &[
            "id", "name", "agent", "enabled", "trigger", "template", "reason",
        ]
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.agent_id.clone(),
            self.enabled.to_string(),
            trigger(self),
            self.prompt_template.clone(),
            self.disabled_reason.clone(),
        ]
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        let mut details: Vec<(&'static str, String)> =
            Self::headers().iter().copied().zip(self.row()).collect();
        details.push(("max concurrency", self.max_concurrency.to_string()));
        if let Some(pause) = &self.pause {
            details.push((
                "paused",
                format!(
                    "by {} since {} ({}) {}",
                    pause.by,
                    time(pause.since.as_ref()),
                    short(pause.while_paused().as_str_name(), "WHILE_PAUSED_"),
                    pause.reason
                )
                .trim()
                .to_owned(),
            ));
        }
        if !self.concurrency_keys.is_empty() {
            details.push(("keys", self.concurrency_keys.join(" ")));
        }
        if let Some(sched::trigger::Kind::Webhook(webhook)) =
            self.trigger.as_ref().and_then(|t| t.kind.as_ref())
        {
            details.push(("webhook url", webhook.url.clone()));
            let mapping: Vec<String> = webhook
                .mapping
                .iter()
                .map(|(field, pointer)| format!("{field}={pointer}"))
                .collect();
            details.push(("mapping", mapping.join(" ")));
            if !webhook.secret.is_empty() {
                details.push((
                    "secret",
                    format!("{} (shown once: keep it now)", webhook.secret),
                ));
            }
        }
        details
    }

    fn json(&self) -> Value {
        let webhook = match self.trigger.as_ref().and_then(|t| t.kind.as_ref()) {
            Some(sched::trigger::Kind::Webhook(w)) => json!({
                "url": w.url, "events": w.events, "actions": w.actions, "mapping": w.mapping,
                "secret": (!w.secret.is_empty()).then_some(&w.secret),
            }),
            _ => Value::Null,
        };
        json!({
            "id": self.id,
            "name": self.name,
            "agent_id": self.agent_id,
            "enabled": self.enabled,
            "trigger": trigger(self),
            "webhook": webhook,
            "prompt_template": self.prompt_template,
            "max_concurrency": self.max_concurrency,
            "max_attempts": self.max_attempts,
            "concurrency_keys": self.concurrency_keys,
            "pause": self.pause.as_ref().map(|pause| json!({
                "by": pause.by,
                "since": time(pause.since.as_ref()),
                "reason": pause.reason,
                "while_paused": short(pause.while_paused().as_str_name(), "WHILE_PAUSED_"),
            })),
            "disabled_reason": self.disabled_reason,
            "create_time": time(self.create_time.as_ref()),
            "update_time": time(self.update_time.as_ref()),
        })
    }
}

impl Render for sched::Task {
    fn headers() -> &'static [&'static str] {
        &["id", "state", "attempts", "title", "output", "error"]
    }

    fn row(&self) -> Vec<String> {
        let first_line = |s: &str| shown(s.lines().next().unwrap_or(""));
        vec![
            self.id.clone(),
            short(self.state().as_str_name(), "TASK_STATE_"),
            self.attempts.to_string(),
            self.fields
                .as_ref()
                .map(|f| f.title.clone())
                .unwrap_or_default(),
            first_line(&self.output),
            first_line(&self.last_error),
        ]
    }

    fn json(&self) -> Value {
        let fields = self.fields.clone().unwrap_or_default();
        json!({
            "id": self.id,
            "workflow_id": self.workflow_id,
            "idempotency_key": self.idempotency_key,
            "state": short(self.state().as_str_name(), "TASK_STATE_"),
            "fields": {
                "title": fields.title, "body": fields.body, "url": fields.url,
                "labels": fields.labels, "metadata": fields.metadata,
            },
            "prompt": self.prompt,
            "priority": self.priority,
            "attempts": self.attempts,
            "output": self.output,
            "last_error": self.last_error,
            "create_time": time(self.create_time.as_ref()),
            "update_time": time(self.update_time.as_ref()),
        })
    }
}

/// "60/1m", or empty for no rate.
fn rate(key: &sched::ConcurrencyKey) -> String {
    match key
        .rate_period
        .and_then(|period| std::time::Duration::try_from(period).ok())
    {
        Some(period) if key.rate_limit > 0 => {
            format!("{}/{}", key.rate_limit, humantime::format_duration(period))
        }
        _ => String::new(),
    }
}

impl Render for sched::ConcurrencyKey {
    fn headers() -> &'static [&'static str] {
        &["name", "limit", "rate", "running", "waiting", "workflows"]
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.max_running.to_string(),
            rate(self),
            self.running.to_string(),
            self.waiting.to_string(),
            self.workflows.to_string(),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "max_running": self.max_running,
            "rate": rate(self),
            "running": self.running,
            "waiting": self.waiting,
            "workflows": self.workflows,
        })
    }
}

impl Render for sched::Runner {
    fn headers() -> &'static [&'static str] {
        &["workflow", "agent", "state", "since", "starts", "reason"]
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.workflow_id.clone(),
            self.agent_id.clone(),
            short(self.state().as_str_name(), "RUNNER_STATE_"),
            time(self.since.as_ref()),
            self.starts.to_string(),
            self.reason.clone(),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "workflow_id": self.workflow_id,
            "agent_id": self.agent_id,
            "state": short(self.state().as_str_name(), "RUNNER_STATE_"),
            "reason": self.reason,
            "since": time(self.since.as_ref()),
            "starts": self.starts,
        })
    }
}

/// One task change: a line, or one JSON object per line (NDJSON).
pub(crate) fn task_event(output: Output, event: &sched::TaskEvent) {
    let state = short(event.state().as_str_name(), "TASK_STATE_");
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "cursor": event.cursor,
                "time": time(event.time.as_ref()),
                "task_id": event.task_id,
                "workflow_id": event.workflow_id,
                "state": state,
                "attempt": event.attempt,
                "progress": event.progress.as_ref().map(|p| json!({
                    "message": p.message,
                    "fraction": p.fraction,
                    "output": p.output,
                })),
            })
        ),
        Output::Table => {
            let what = match &event.progress {
                None => state,
                Some(p) if !p.output.is_empty() => {
                    format!("output    {}", p.output.trim_end_matches('\n'))
                }
                Some(p) if p.fraction >= 0.0 => {
                    format!("progress  {:>3.0}% {}", p.fraction * 100.0, p.message)
                }
                Some(p) => format!("progress  {}", p.message),
            };
            println!(
                "{}  {}  {}  attempt {}  {what}",
                event.cursor,
                time(event.time.as_ref()),
                event.task_id,
                event.attempt
            );
        }
    }
}

impl Render for sched::WorkflowDiagnosis {
    fn headers() -> &'static [&'static str] {
        &["verdict", "summary"]
    }

    fn row(&self) -> Vec<String> {
        vec![
            short(self.verdict().as_str_name(), "VERDICT_"),
            self.summary.clone(),
        ]
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        let seconds = |d: Option<&prost_types::Duration>| {
            d.and_then(|d| std::time::Duration::try_from(*d).ok())
                .map_or(String::new(), |d| format!("{}s", d.as_secs()))
        };
        let in_flight: Vec<String> = self
            .in_flight
            .iter()
            .map(|t| {
                format!(
                    "{} (attempt {}, {})",
                    t.task_id,
                    t.attempt,
                    seconds(t.age.as_ref())
                )
            })
            .collect();
        vec![
            ("verdict", short(self.verdict().as_str_name(), "VERDICT_")),
            ("why", self.summary.clone()),
            (
                "enabled",
                format!("{} {}", self.enabled, self.disabled_reason)
                    .trim()
                    .to_owned(),
            ),
            (
                "agent",
                format!(
                    "{} (generation {}) since {} {}",
                    self.agent_status,
                    self.agent_generation,
                    time(self.agent_since.as_ref()),
                    self.agent_status_message
                )
                .trim()
                .to_owned(),
            ),
            (
                "runner",
                format!(
                    "{} {}",
                    short(self.runner_state().as_str_name(), "RUNNER_STATE_"),
                    self.runner_reason
                ),
            ),
            (
                "lease",
                format!("{} (term {})", self.lease_holder, self.lease_term),
            ),
            (
                "in flight",
                format!(
                    "{}/{} {}",
                    self.in_flight.len(),
                    self.max_concurrency,
                    in_flight.join(", ")
                ),
            ),
            (
                "pending",
                format!(
                    "{} ({} due) oldest {} {}",
                    self.pending,
                    self.due,
                    self.oldest_pending_task_id,
                    seconds(self.oldest_pending_age.as_ref())
                ),
            ),
            ("next fire", time(self.next_fire.as_ref())),
            (
                "approvals",
                self.pending_approvals
                    .iter()
                    .map(|a| {
                        format!(
                            "{} ({} for task {}, {})",
                            a.approval_id,
                            shown(&a.tool),
                            shown(&a.task_id),
                            seconds(a.age.as_ref())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("last error", self.last_error.clone()),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "workflow_id": self.workflow_id,
            "verdict": short(self.verdict().as_str_name(), "VERDICT_"),
            "summary": self.summary,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "agent_status": self.agent_status,
            "agent_status_message": self.agent_status_message,
            "agent_generation": self.agent_generation,
            "runner_state": short(self.runner_state().as_str_name(), "RUNNER_STATE_"),
            "runner_reason": self.runner_reason,
            "lease_holder": self.lease_holder,
            "lease_term": self.lease_term,
            "max_concurrency": self.max_concurrency,
            "in_flight": self.in_flight.iter().map(|t| json!({
                "task_id": t.task_id,
                "attempt": t.attempt,
            })).collect::<Vec<_>>(),
            "pending": self.pending,
            "due": self.due,
            "oldest_pending_task_id": self.oldest_pending_task_id,
            "next_fire": time(self.next_fire.as_ref()),
            "last_error": self.last_error,
            "pending_approvals": self.pending_approvals.iter().map(|a| json!({
                "approval_id": a.approval_id,
                "task_id": a.task_id,
                "tool": a.tool,
            })).collect::<Vec<_>>(),
        })
    }
}

impl Render for sched::Budget {
    fn headers() -> &'static [&'static str] {
        &["workflow", "agent", "per", "used", "resets", "spent"]
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.workflow_id.clone(),
            self.agent_id.clone(),
            shepherd_proto::budget_text::period(self),
            shepherd_proto::budget_text::used(self),
            time(self.resets_at.as_ref()),
            self.exhausted.clone(),
        ]
    }

    fn json(&self) -> Value {
        let usage = self.usage.unwrap_or_default();
        json!({
            "workflow_id": self.workflow_id,
            "agent_id": self.agent_id,
            "per": shepherd_proto::budget_text::period(self),
            "max_tasks": self.max_tasks,
            "max_task_seconds": self.max_task_seconds,
            "max_cost": self.max_cost,
            "usage": {
                "tasks": usage.tasks,
                "task_seconds": usage.task_seconds,
                "cost": usage.cost,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
            },
            "resets_at": time(self.resets_at.as_ref()),
            "exhausted": self.exhausted,
        })
    }
}
