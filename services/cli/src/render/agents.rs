//! The manager and its agents.

use serde_json::{Value, json};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::short_name as short;

use super::format::{Render, time};

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
