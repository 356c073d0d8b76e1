//! The agent domain model: what an agent is, what may be asked of it, and the
//! validation that turns client input into a spec the supervisor can trust.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub(crate) use crate::containment::ResourceLimits;
use crate::error::Error;

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesiredState {
    Running,
    Stopped,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "running" => Some(Self::Running),
            "stopped" => Some(Self::Stopped),
            _ => None,
        }
    }
}

/// What was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentStatus {
    Pending,
    Starting,
    Ready,
    Exited,
    Failed,
    Stopped,
    /// Its node stopped renewing its lease: what runs there is unknown.
    Lost,
}

impl AgentStatus {
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Starting,
        Self::Ready,
        Self::Exited,
        Self::Failed,
        Self::Stopped,
        Self::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// Why an agent's process last ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// It exited by itself, with a code.
    Exited,
    /// A signal killed it (a stop, a restart, kill -9 ...).
    Killed,
    /// Its tree exceeded its memory limit and was killed.
    OomKilled,
    /// It was adopted, so its status went to someone else.
    Unknown,
}

impl ExitReason {
    pub const ALL: [Self; 4] = [Self::Exited, Self::Killed, Self::OomKilled, Self::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exited => "exited",
            Self::Killed => "killed",
            Self::OomKilled => "oom-killed",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    Never,
    OnFailure,
    Always,
}

/// When and how fast the supervisor relaunches an exited process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    /// Automatic restarts allowed within `window` before the agent is FAILED.
    pub max_restarts: u32,
    #[serde(with = "millis")]
    pub window: Duration,
    #[serde(with = "millis")]
    pub initial_backoff: Duration,
    #[serde(with = "millis")]
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            mode: RestartMode::OnFailure,
            max_restarts: 5,
            window: Duration::from_secs(60),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RestartPolicy {
    /// Whether an exit should be followed by an automatic restart.
    pub fn restarts_after(&self, success: bool) -> bool {
        match self.mode {
            RestartMode::Never => false,
            RestartMode::OnFailure => !success,
            RestartMode::Always => true,
        }
    }

    /// Backoff before the `n`th (1-based) automatic restart in the window:
    /// `initial * 2^(n-1)`, capped at `max_backoff`.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// How to run an agent. Stored as JSON (labels live in their own column so
/// they can be filtered by an index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub restart_policy: RestartPolicy,
    /// Resource limits of the whole process tree (unset: the manager's
    /// defaults, if any).
    #[serde(default)]
    pub limits: ResourceLimits,
    /// Who launches the agent.
    #[serde(default)]
    pub runtime: Runtime,
    /// Container image (Kubernetes runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The user the process runs as (None: the manager's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<String>,
}

/// Who launches an agent's process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// The manager, which supervises it.
    #[default]
    Process,
    /// Something else; it connects with its credential.
    External,
    /// A Pod per generation, through the Kubernetes API (experimental).
    Kubernetes,
}

/// An agent as stored.
#[derive(Debug, Clone)]
pub struct AgentRecord {
    pub id: Uuid,
    pub name: String,
    pub spec: AgentSpec,
    pub labels: BTreeMap<String, String>,
    pub desired_state: DesiredState,
    pub status: AgentStatus,
    pub status_message: String,
    pub generation: u64,
    pub pid: Option<i32>,
    /// Why the last process ended (None: none has yet).
    pub exit_reason: Option<ExitReason>,
    /// External agents: the instance whose session is (or was) current.
    pub instance: Option<String>,
    /// The manager node that supervises it now (None: none yet).
    pub node: Option<String>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// A validated request to create an agent.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub name: String,
    pub spec: AgentSpec,
    pub labels: BTreeMap<String, String>,
    pub desired_state: DesiredState,
}

/// Environment variables the manager sets for every agent; a spec may not
/// override them.
pub(crate) const RESERVED_ENV: [&str; 5] = [
    "SHEPHERD_AGENT_ID",
    "SHEPHERD_MANAGER_URL",
    "SHEPHERD_MANAGER_CA_FILE",
    "SHEPHERD_SESSION_TOKEN",
    "SHEPHERD_GENERATION",
];

pub(crate) use shepherd_platform::validate::name as validate_name;

/// Checks that `command` can be executed: an existing path, or a program
/// found in PATH. Catching this at create time gives a clear error instead of
/// an agent that fails on every launch.
pub(crate) fn validate_command(command: &str) -> Result<(), Error> {
    if command.trim().is_empty() {
        return Err(Error::invalid(
            "agent.command",
            "must not be empty: give the program to run, e.g. /usr/bin/python3 or shepherd-agent",
        ));
    }
    if command.contains('/') && !command.starts_with('/') {
        return Err(Error::invalid(
            "agent.command",
            "must be an absolute path or a bare program name looked up in the manager's PATH (relative paths would depend on the manager's working directory)",
        ));
    }
    let found = if command.starts_with('/') {
        is_executable(Path::new(command))
    } else {
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| is_executable(&dir.join(command)))
        })
    };
    if found {
        Ok(())
    } else {
        Err(Error::invalid(
            "agent.command",
            "was not found as an executable file: give an absolute path or a program in the manager's PATH",
        ))
    }
}

/// Most arguments, and the longest one.
/// Longest instance id an external agent may name itself by (the SDK's
/// are 32 hex digits); the session's edge and its supervisor check the
/// same bound.
pub(crate) const MAX_INSTANCE_ID: usize = 128;

pub(crate) const MAX_ARGS: usize = 256;
pub(crate) const MAX_ARG_BYTES: usize = 8 * 1024;

pub(crate) fn validate_args(args: &[String]) -> Result<(), Error> {
    if args.len() > MAX_ARGS {
        return Err(Error::invalid(
            "agent.args",
            format!("at most {MAX_ARGS} arguments"),
        ));
    }
    for (index, arg) in args.iter().enumerate() {
        if arg.len() > MAX_ARG_BYTES || arg.contains('\0') {
            return Err(Error::invalid(
                format!("agent.args[{index}]"),
                format!("must be at most {MAX_ARG_BYTES} bytes, without NUL"),
            ));
        }
    }
    Ok(())
}

/// A regular file someone may execute.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Most environment variables and labels per agent, and their sizes.
pub(crate) const MAX_ENTRIES: usize = 256;
pub(crate) const MAX_KEY_BYTES: usize = 256;
pub(crate) const MAX_VALUE_BYTES: usize = 32 * 1024;

pub(crate) fn validate_env(env: &BTreeMap<String, String>) -> Result<(), Error> {
    use shepherd_platform::validate::{quote, text};
    if env.len() > MAX_ENTRIES {
        return Err(Error::invalid(
            "agent.env",
            format!("at most {MAX_ENTRIES} variables"),
        ));
    }
    for (key, value) in env {
        if key.is_empty() || key.len() > MAX_KEY_BYTES || key.contains('=') || key.contains('\0') {
            return Err(Error::invalid(
                "agent.env",
                format!(
                    "{} is not a valid environment variable name (1-{MAX_KEY_BYTES} bytes, no '=' or NUL)",
                    quote(key)
                ),
            ));
        }
        text(
            &format!("agent.env[{}]", quote(key)),
            value,
            MAX_VALUE_BYTES,
        )?;
        if RESERVED_ENV.contains(&key.as_str()) {
            return Err(Error::invalid(
                "agent.env",
                format!("{key} is set by the manager and cannot be overridden"),
            ));
        }
    }
    Ok(())
}

/// A user name (`[a-z_][a-z0-9_-]*`, at most 32) or a numeric uid.
pub(crate) fn validate_user(user: &str) -> Result<(), Error> {
    let name = user.len() <= 32
        && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    let uid = !user.is_empty() && user.len() <= 10 && user.chars().all(|c| c.is_ascii_digit());
    if name || uid {
        return Ok(());
    }
    Err(Error::invalid(
        "agent.run_as_user",
        "must be a user name ([a-z_][a-z0-9_-]*, at most 32) or a numeric uid",
    ))
}

pub(crate) fn validate_working_dir(dir: &str) -> Result<(), Error> {
    if Path::new(dir).is_dir() {
        Ok(())
    } else {
        Err(Error::invalid(
            "agent.working_dir",
            format!(
                "{} is not an existing directory",
                shepherd_platform::validate::quote(dir)
            ),
        ))
    }
}

/// Longest label key and value.
pub(crate) const MAX_LABEL_KEY: usize = 63;
pub(crate) const MAX_LABEL_VALUE: usize = 255;

pub(crate) fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), Error> {
    check_labels("agent.labels", labels)
}

/// A `ListAgents` label filter: labels as an agent's.
pub(crate) fn validate_label_filter(labels: &BTreeMap<String, String>) -> Result<(), Error> {
    check_labels("labels", labels)
}

fn check_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), Error> {
    if labels.len() > MAX_ENTRIES {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_ENTRIES} labels"),
        ));
    }
    for (key, value) in labels {
        let nul = key.contains('\0') || value.contains('\0');
        if key.is_empty() || key.len() > MAX_LABEL_KEY || value.len() > MAX_LABEL_VALUE || nul {
            return Err(Error::invalid(
                field,
                format!(
                    "label {}: keys must be 1-{MAX_LABEL_KEY} bytes and values at most {MAX_LABEL_VALUE}, without NUL",
                    shepherd_platform::validate::quote(key)
                ),
            ));
        }
    }
    Ok(())
}

/// Floors of a restart policy: a zero backoff in a tiny window would
/// fork-loop a crashing agent.
pub(crate) const MIN_RESTART_WINDOW: Duration = Duration::from_secs(1);
pub(crate) const MIN_RESTART_BACKOFF: Duration = Duration::from_millis(10);
pub(crate) const MAX_RESTART_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) fn validate_policy(policy: &RestartPolicy) -> Result<(), Error> {
    if policy.window < MIN_RESTART_WINDOW || policy.window > MAX_RESTART_DURATION {
        return Err(Error::invalid(
            "agent.restart_policy.window",
            "must be between 1s and 7 days",
        ));
    }
    if policy.initial_backoff < MIN_RESTART_BACKOFF {
        return Err(Error::invalid(
            "agent.restart_policy.initial_backoff",
            "must be at least 10ms",
        ));
    }
    if policy.max_backoff > MAX_RESTART_DURATION {
        return Err(Error::invalid(
            "agent.restart_policy.max_backoff",
            "must be at most 7 days",
        ));
    }
    if policy.initial_backoff > policy.max_backoff {
        return Err(Error::invalid(
            "agent.restart_policy.initial_backoff",
            "must not exceed max_backoff",
        ));
    }
    Ok(())
}

/// Parses an agent id given by a client.
pub(crate) fn parse_agent_id(field: &str, text: &str) -> Result<Uuid, Error> {
    Ok(shepherd_platform::validate::id(field, text, "agent")?)
}

/// Durations stored as integer milliseconds in the spec JSON.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..RestartPolicy::default()
        };
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(3), Duration::from_millis(350));
        assert_eq!(policy.backoff(40), Duration::from_millis(350));
    }

    #[test]
    fn restart_modes() {
        let mut policy = RestartPolicy::default();
        assert!(policy.restarts_after(false) && !policy.restarts_after(true));
        policy.mode = RestartMode::Always;
        assert!(policy.restarts_after(true));
        policy.mode = RestartMode::Never;
        assert!(!policy.restarts_after(false));
    }
}

#[cfg(test)]
mod properties {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::{RestartMode, RestartPolicy, validate_policy};

    proptest! {
        /// Any policy is refused or backs off within its bounds for any
        /// number of restarts: no overflow, and never below the floor that
        /// stops a fork loop.
        #[test]
        fn accepted_policies_back_off_within_bounds(
            window in any::<u64>(),
            initial in any::<u64>(),
            max in any::<u64>(),
            restarts in any::<u32>(),
        ) {
            let policy = RestartPolicy {
                mode: RestartMode::OnFailure,
                max_restarts: 5,
                window: Duration::from_millis(window),
                initial_backoff: Duration::from_millis(initial),
                max_backoff: Duration::from_millis(max),
            };
            if validate_policy(&policy).is_ok() {
                let backoff = policy.backoff(restarts);
                prop_assert!(backoff <= policy.max_backoff);
                prop_assert!(backoff >= super::MIN_RESTART_BACKOFF);
            }
        }
    }
}
