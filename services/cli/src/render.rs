//! Turning API resources into rows (tables) and JSON objects (scripts).

use serde_json::{Value, json};
use shepherd_proto::agentmanager::v1::{self as am, agent_event::Kind};
use shepherd_proto::scheduler::v1 as sched;

use crate::cli::Output;

/// A resource that can be printed both ways.
pub(crate) trait Render {
    fn headers() -> &'static [&'static str];
    fn row(&self) -> Vec<String>;
    fn json(&self) -> Value;

    /// The key/value list `get` prints: the row, unless a resource has more
    /// to say about one item than fits a table.
    fn details(&self) -> Vec<(&'static str, String)> {
        Self::headers().iter().copied().zip(self.row()).collect()
    }
}

/// Prints one resource: a key/value list, or a JSON object.
pub(crate) fn one<T: Render>(output: Output, item: &T) {
    match output {
        Output::Json => println!("{}", item.json()),
        Output::Table => {
            for (header, value) in item.details() {
                println!("{:<14} {value}", format!("{header}:"));
            }
        }
    }
}

/// Prints a list: an aligned table, or a JSON array.
pub(crate) fn many<T: Render>(output: Output, items: &[T]) {
    match output {
        Output::Json => println!("{}", Value::Array(items.iter().map(Render::json).collect())),
        Output::Table => table(T::headers(), items.iter().map(Render::row).collect()),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
}

fn time(value: Option<&prost_types::Timestamp>) -> String {
    value
        .and_then(|t| std::time::SystemTime::try_from(*t).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

impl Render for am::ManagerInfo {
    fn headers() -> &'static [&'static str] {
        &["node", "containment", "enforces", "defaults", "nodes"]
    }

    fn row(&self) -> Vec<String> {
        let enforced: Vec<&str> = [
            (self.enforces_memory, "memory"),
            (self.enforces_cpu, "cpu"),
            (self.enforces_processes, "processes"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| {
                let state = if node.live { "live" } else { "expired" };
                format!("{} (term {}, {state}, {})", node.name, node.term, node.url)
            })
            .collect();
        vec![
            format!("{} (term {})", self.node, self.term),
            self.containment_mode.clone(),
            if enforced.is_empty() {
                "no limits".into()
            } else {
                enforced.join(", ")
            },
            limits(self.default_limits.as_ref()),
            nodes.join("; "),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "node": self.node,
            "term": self.term,
            "nodes": self.nodes.iter().map(|node| json!({
                "name": node.name,
                "url": node.url,
                "term": node.term,
                "live": node.live,
                "lease_expires": time(node.lease_expires.as_ref()),
            })).collect::<Vec<_>>(),
            "containment_mode": self.containment_mode,
            "enforces_memory": self.enforces_memory,
            "enforces_cpu": self.enforces_cpu,
            "enforces_processes": self.enforces_processes,
            "default_limits": self.default_limits.as_ref().map(|l| json!({
                "memory_bytes": l.memory_bytes,
                "cpu_cores": l.cpu_cores,
                "max_processes": l.max_processes,
            })),
        })
    }
}

/// 12.3MiB, 1.0GiB, 512B.
fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count}B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

fn limits(limits: Option<&am::ResourceLimits>) -> String {
    let Some(limits) = limits else {
        return "none".into();
    };
    let mut parts = Vec::new();
    if limits.memory_bytes > 0 {
        parts.push(format!("memory {}", bytes(limits.memory_bytes)));
    }
    if limits.cpu_cores > 0.0 {
        parts.push(format!("cpu {} cores", limits.cpu_cores));
    }
    if limits.max_processes > 0 {
        parts.push(format!("{} processes", limits.max_processes));
    }
    if parts.is_empty() {
        "none (manager defaults)".into()
    } else {
        parts.join(", ")
    }
}

use shepherd_proto::short_name as short;

impl Render for am::Agent {
    fn headers() -> &'static [&'static str] {
        &[
            "id",
            "name",
            "status",
            "desired",
            "generation",
            "pid",
            "cpu",
            "memory",
            "message",
        ]
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        let usage = self.usage.as_ref();
        let mut details: Vec<(&'static str, String)> =
            Self::headers().iter().copied().zip(self.row()).collect();
        details.extend([
            (
                "cpu time",
                usage
                    .and_then(|u| u.cpu_time)
                    .and_then(|t| std::time::Duration::try_from(t).ok())
                    .map_or("-".into(), |t| format!("{:.2}s", t.as_secs_f64())),
            ),
            (
                "processes",
                usage.map_or("-".into(), |u| u.processes.to_string()),
            ),
            ("limits", limits(self.limits.as_ref())),
            (
                "runtime",
                short(self.runtime().as_str_name(), "RUNTIME_").replace("unspecified", "process"),
            ),
            ("node", self.node.clone()),
            (
                "last exit",
                match self.exit_reason() {
                    am::ExitReason::Unspecified => "-".into(),
                    reason => short(reason.as_str_name(), "EXIT_REASON_"),
                },
            ),
        ]);
        if !self.credential.is_empty() {
            details.push((
                "credential",
                format!(
                    "{} (shown once: give it to the agent as SHEPHERD_AGENT_CREDENTIAL)",
                    self.credential
                ),
            ));
        }
        details
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            short(self.status().as_str_name(), "AGENT_STATUS_"),
            short(self.desired_state().as_str_name(), "DESIRED_STATE_"),
            self.generation.to_string(),
            if self.pid > 0 {
                self.pid.to_string()
            } else {
                "-".into()
            },
            self.usage
                .as_ref()
                .map_or("-".into(), |u| format!("{:.2}", u.cpu_cores)),
            self.usage
                .as_ref()
                .map_or("-".into(), |u| bytes(u.memory_bytes)),
            self.status_message.clone(),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "command": self.command,
            "args": self.args,
            "env": self.env,
            "working_dir": self.working_dir,
            "labels": self.labels,
            "status": short(self.status().as_str_name(), "AGENT_STATUS_"),
            "desired_state": short(self.desired_state().as_str_name(), "DESIRED_STATE_"),
            "status_message": self.status_message,
            "generation": self.generation,
            "pid": self.pid,
            "restart_count": self.restart_count,
            "limits": self.limits.as_ref().map(|l| json!({
                "memory_bytes": l.memory_bytes,
                "cpu_cores": l.cpu_cores,
                "max_processes": l.max_processes,
            })),
            "usage": self.usage.as_ref().map(|u| json!({
                "memory_bytes": u.memory_bytes,
                "cpu_seconds": u.cpu_time
                    .and_then(|t| std::time::Duration::try_from(t).ok())
                    .map(|t| t.as_secs_f64()),
                "cpu_cores": u.cpu_cores,
                "processes": u.processes,
            })),
            "exit_reason": short(self.exit_reason().as_str_name(), "EXIT_REASON_"),
            "runtime": short(self.runtime().as_str_name(), "RUNTIME_"),
            "node": self.node,
            "credential": (!self.credential.is_empty()).then_some(&self.credential),
            "create_time": time(self.create_time.as_ref()),
            "update_time": time(self.update_time.as_ref()),
        })
    }
}

fn trigger(workflow: &sched::Workflow) -> String {
    use sched::trigger::Kind as T;
    let duration = |d: Option<&prost_types::Duration>| {
        d.and_then(|d| std::time::Duration::try_from(*d).ok())
            .map(|d| humantime::format_duration(d).to_string())
            .unwrap_or_default()
    };
    match workflow.trigger.as_ref().and_then(|t| t.kind.as_ref()) {
        None | Some(T::Manual(_)) => "manual".into(),
        Some(T::Interval(i)) => format!("every {}", duration(i.period.as_ref())),
        Some(T::Cron(c)) => format!("cron {}", c.expression),
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
            "attempts": self.attempts,
            "output": self.output,
            "last_error": self.last_error,
            "create_time": time(self.create_time.as_ref()),
            "update_time": time(self.update_time.as_ref()),
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

/// An event's kind and its details.
pub(crate) fn event_kind(event: &am::AgentEvent) -> (&'static str, Value) {
    match &event.kind {
        Some(Kind::Created(e)) => ("created", json!({ "name": e.name })),
        Some(Kind::Started(e)) => ("started", json!({ "pid": e.pid })),
        Some(Kind::Ready(_)) => ("ready", json!({})),
        Some(Kind::Disconnected(e)) => ("disconnected", json!({ "reason": e.reason })),
        Some(Kind::Exited(e)) => (
            "exited",
            json!({ "code": e.code, "signal": e.signal, "reason": short(e.reason().as_str_name(), "EXIT_REASON_") }),
        ),
        Some(Kind::Restarted(e)) => (
            "restarted",
            json!({ "generation": e.generation, "reason": e.reason }),
        ),
        Some(Kind::Stopped(_)) => ("stopped", json!({})),
        Some(Kind::Deleted(_)) => ("deleted", json!({})),
        Some(Kind::TaskAccepted(e)) => ("task_accepted", json!({ "task_id": e.task_id })),
        Some(Kind::TaskCompleted(e)) => (
            "task_completed",
            json!({
                "task_id": e.task_id,
                "outcome": short(e.outcome().as_str_name(), "TASK_OUTCOME_"),
                "output": e.output,
                "attempt": e.attempt,
            }),
        ),
        Some(Kind::TaskLost(e)) => (
            "task_lost",
            json!({ "task_id": e.task_id, "reason": e.reason, "attempt": e.attempt }),
        ),
        Some(Kind::TaskProgress(e)) => (
            "task_progress",
            json!({
                "task_id": e.task_id,
                "attempt": e.attempt,
                "message": e.message,
                "fraction": e.fraction,
                "output": e.output,
            }),
        ),
        Some(Kind::ApprovalRequested(e)) => {
            ("approval_requested", approval_json(e.approval.as_ref()))
        }
        Some(Kind::ApprovalDecided(e)) => ("approval_decided", approval_json(e.approval.as_ref())),
        None => ("unknown", json!({})),
    }
}

fn approval_json(approval: Option<&am::Approval>) -> Value {
    approval.map_or_else(|| json!({}), Render::json)
}

/// An approval state's short name ("pending", "approved", ...).
pub(crate) fn approval_state(approval: &am::Approval) -> String {
    short(approval.state().as_str_name(), "APPROVAL_STATE_")
}

impl Render for am::Approval {
    fn headers() -> &'static [&'static str] {
        &[
            "id",
            "state",
            "tool",
            "task",
            "agent",
            "asked",
            "decided by",
            "comment",
        ]
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            approval_state(self),
            shown(&self.tool),
            shown(&self.task_id),
            self.agent_id.clone(),
            time(self.create_time.as_ref()),
            self.decided_by.clone(),
            shown(&self.comment),
        ]
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.clone()),
            ("state", approval_state(self)),
            // What the agent sent, escaped: a person approves exactly what
            // runs, with no tail hidden by \r, ANSI codes or a bidi override.
            ("tool", shown(&self.tool)),
            ("input", shown(&self.input)),
            ("reason", shown(&self.reason)),
            ("digest", self.digest.clone()),
            (
                "task",
                format!("{} (attempt {})", shown(&self.task_id), self.attempt),
            ),
            ("workflow", self.workflow_id.clone()),
            ("agent", self.agent_id.clone()),
            ("asked", time(self.create_time.as_ref())),
            ("expires", time(self.expire_time.as_ref())),
            ("decided", time(self.decide_time.as_ref())),
            ("decided by", self.decided_by.clone()),
            ("comment", shown(&self.comment)),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "state": approval_state(self),
            "agent_id": self.agent_id,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "workflow_id": self.workflow_id,
            "tool": self.tool,
            "input": self.input,
            "reason": self.reason,
            "digest": self.digest,
            "comment": self.comment,
            "decided_by": self.decided_by,
            "create_time": time(self.create_time.as_ref()),
            "decide_time": time(self.decide_time.as_ref()),
            "expire_time": time(self.expire_time.as_ref()),
        })
    }
}

/// One event: a line, or one JSON object per line (NDJSON).
pub(crate) fn event(output: Output, event: &am::AgentEvent) {
    let (kind, details) = event_kind(event);
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "sequence": event.sequence,
                "time": time(event.time.as_ref()),
                "agent_id": event.agent_id,
                "generation": event.generation,
                "kind": kind,
                "details": details,
            })
        ),
        Output::Table => println!(
            "{:>6}  {}  {}  gen {}  {kind:<14} {details}",
            event.sequence,
            time(event.time.as_ref()),
            event.agent_id,
            event.generation
        ),
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

/// Text an agent sent, as a person should see it (control characters, ANSI
/// escapes and bidirectional overrides escaped).
pub(crate) fn shown(text: &str) -> String {
    shepherd_platform::text::visible(text).into_owned()
}

/// An approval with everything its agent sent escaped for a reader (MCP
/// hands approvals to a model and a person; JSON output keeps them exact
/// for programs).
pub(crate) fn approval_shown(approval: &am::Approval) -> am::Approval {
    am::Approval {
        tool: shown(&approval.tool),
        input: shown(&approval.input),
        reason: shown(&approval.reason),
        task_id: shown(&approval.task_id),
        comment: shown(&approval.comment),
        ..approval.clone()
    }
}

/// An audit entry and the service that kept it.
pub(crate) struct Audited(pub &'static str, pub shepherd_proto::audit::v1::AuditEvent);

impl Render for Audited {
    fn headers() -> &'static [&'static str] {
        &[
            "time", "service", "who", "role", "rpc", "target", "outcome", "peer",
        ]
    }

    fn row(&self) -> Vec<String> {
        let event = &self.1;
        vec![
            time(event.time.as_ref()),
            self.0.to_owned(),
            shown(&event.who),
            event.role.clone(),
            event.rpc.clone(),
            shown(&event.target),
            event.outcome.clone(),
            event.peer.clone(),
        ]
    }

    fn json(&self) -> Value {
        let event = &self.1;
        json!({
            "id": event.id,
            "time": time(event.time.as_ref()),
            "service": self.0,
            "who": event.who,
            "role": event.role,
            "rpc": event.rpc,
            "target": event.target,
            "outcome": event.outcome,
            "peer": event.peer,
        })
    }
}
