//! An agent spec, from a TOML file or from flags.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use shepherd_proto::agentmanager::v1::{self as am};

use crate::cli::CreateAgent;
use crate::clients::UsageError;

/// An agent spec file (TOML).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    name: String,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: HashMap<String, String>,
    #[serde(default)]
    labels: HashMap<String, String>,
    #[serde(default)]
    working_dir: String,
    #[serde(default)]
    stopped: bool,
    #[serde(default)]
    restart: RestartFile,
    #[serde(default)]
    limits: LimitsFile,
}

/// `[limits]`: memory = "512MiB", cpus = 0.5, max_processes = 64.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    memory: Option<String>,
    cpus: Option<f64>,
    max_processes: Option<u32>,
}

fn limits(
    memory: Option<u64>,
    cpus: Option<f64>,
    max_processes: Option<u32>,
) -> Option<am::ResourceLimits> {
    (memory.is_some() || cpus.is_some() || max_processes.is_some()).then(|| am::ResourceLimits {
        memory_bytes: memory.unwrap_or(0),
        cpu_cores: cpus.unwrap_or(0.0),
        max_processes: max_processes.unwrap_or(0),
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RestartFile {
    mode: Option<String>,
    max_restarts: Option<u32>,
    window: Option<String>,
    initial_backoff: Option<String>,
    max_backoff: Option<String>,
}

fn restart_mode(text: &str) -> anyhow::Result<am::RestartMode> {
    Ok(match text {
        "never" => am::RestartMode::Never,
        "on-failure" => am::RestartMode::OnFailure,
        "always" => am::RestartMode::Always,
        other => {
            return Err(UsageError(format!(
                "restart mode {other:?}: use never, on-failure or always"
            ))
            .into());
        }
    })
}

fn proto_duration(
    field: &str,
    text: Option<&str>,
) -> anyhow::Result<Option<prost_types::Duration>> {
    let Some(text) = text else { return Ok(None) };
    let duration = humantime::parse_duration(text)
        .map_err(|err| UsageError(format!("{field} {text:?}: {err}")))?;
    Ok(prost_types::Duration::try_from(duration).ok())
}

pub(super) fn agent_from_file(path: &Path) -> anyhow::Result<am::Agent> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: AgentFile =
        toml::from_str(&text).map_err(|err| UsageError(format!("{}: {err}", path.display())))?;
    let restart = &file.restart;
    let memory = file
        .limits
        .memory
        .as_deref()
        .map(crate::cli::parse_size)
        .transpose()
        .map_err(|err| UsageError(format!("limits.memory: {err}")))?;
    Ok(am::Agent {
        limits: limits(memory, file.limits.cpus, file.limits.max_processes),
        name: file.name,
        command: file.command,
        args: file.args,
        env: file.env,
        labels: file.labels,
        working_dir: file.working_dir,
        desired_state: if file.stopped {
            am::DesiredState::Stopped
        } else {
            am::DesiredState::Running
        } as i32,
        restart_policy: Some(am::RestartPolicy {
            mode: restart_mode(restart.mode.as_deref().unwrap_or("on-failure"))? as i32,
            max_restarts: restart.max_restarts.unwrap_or(0),
            window: proto_duration("restart.window", restart.window.as_deref())?,
            initial_backoff: proto_duration(
                "restart.initial_backoff",
                restart.initial_backoff.as_deref(),
            )?,
            max_backoff: proto_duration("restart.max_backoff", restart.max_backoff.as_deref())?,
        }),
        ..Default::default()
    })
}

pub(super) fn agent_from_flags(create: CreateAgent) -> anyhow::Result<am::Agent> {
    Ok(am::Agent {
        runtime: if create.external {
            am::Runtime::External
        } else if create.image.is_some() {
            am::Runtime::Kubernetes
        } else {
            am::Runtime::Process
        } as i32,
        image: create.image.unwrap_or_default(),
        limits: limits(create.memory, create.cpus, create.max_processes),
        name: create.name.unwrap_or_default(),
        command: create.command.unwrap_or_default(),
        args: create.args,
        env: create.env.into_iter().collect(),
        labels: create.labels.into_iter().collect(),
        working_dir: create.working_dir.unwrap_or_default(),
        desired_state: if create.stopped {
            am::DesiredState::Stopped
        } else {
            am::DesiredState::Running
        } as i32,
        restart_policy: Some(am::RestartPolicy {
            mode: restart_mode(&create.restart)? as i32,
            max_restarts: create.max_restarts.unwrap_or(0),
            ..Default::default()
        }),
        ..Default::default()
    })
}
