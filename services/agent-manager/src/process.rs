//! Agent processes: spawned in their own process group with captured
//! output, terminated as a group (SIGTERM, then SIGKILL after a grace
//! period).

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::logs::{LogDir, LogStream};
use crate::model::AgentSpec;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub fn success(self) -> bool {
        self.code == Some(0)
    }

    fn from_status(status: io::Result<ExitStatus>) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(status) => Self {
                code: status.code(),
                signal: status.signal(),
            },
            // Waiting failed: the process is gone as far as we can tell.
            Err(_) => Self {
                code: None,
                signal: None,
            },
        }
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (None, None) => f.write_str("ended (status unknown)"),
        }
    }
}

/// Variables an agent inherits from the manager's environment (its spec's
/// `env` comes on top).
const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_BSP_SCHEDULE_DELAY",
];

/// What the process needs to find and authenticate to the manager.
pub struct Launch<'a> {
    pub agent_id: Uuid,
    pub agent_name: &'a str,
    pub spec: &'a AgentSpec,
    pub generation: u64,
    pub session_token: &'a str,
    pub manager_url: &'a str,
    pub manager_ca_file: Option<&'a std::path::Path>,
}

/// A running agent process, owned by its supervisor.
pub struct AgentProcess {
    child: Child,
    pid: i32,
}

impl AgentProcess {
    pub fn spawn(launch: &Launch<'_>, logs: &LogDir) -> io::Result<Self> {
        let spec = launch.spec;
        let mut command = Command::new(&spec.command);
        // Agents do not inherit the manager's environment (it holds the
        // database URL and API token); only a few harmless variables pass.
        command
            .env_clear()
            .envs(
                INHERITED_ENV
                    .iter()
                    .filter_map(|name| std::env::var_os(name).map(|value| (*name, value))),
            )
            .env(
                "OTEL_SERVICE_NAME",
                format!("shepherd-agent/{}", launch.agent_name),
            )
            .args(&spec.args)
            .envs(&spec.env)
            .env("SHEPHERD_AGENT_ID", launch.agent_id.to_string())
            .env("SHEPHERD_MANAGER_URL", launch.manager_url)
            .env("SHEPHERD_SESSION_TOKEN", launch.session_token)
            .env("SHEPHERD_GENERATION", launch.generation.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: signals reach the agent's children too, and a
            // Ctrl-C at the manager's terminal does not reach the agent.
            .process_group(0);
        if let Some(ca) = launch.manager_ca_file {
            command.env("SHEPHERD_MANAGER_CA_FILE", ca);
        }
        if let Some(dir) = &spec.working_dir {
            command.current_dir(dir);
        }
        let mut child = command.spawn()?;
        let pid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .ok_or_else(|| io::Error::other("spawned process has no pid"))?;
        if let Some(stdout) = child.stdout.take() {
            let logs = logs.clone();
            let agent = launch.agent_id;
            tokio::spawn(async move { logs.capture(agent, LogStream::Stdout, stdout).await });
        }
        if let Some(stderr) = child.stderr.take() {
            let logs = logs.clone();
            let agent = launch.agent_id;
            tokio::spawn(async move { logs.capture(agent, LogStream::Stderr, stderr).await });
        }
        Ok(Self { child, pid })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the process to exit. Cancel-safe.
    pub async fn wait(&mut self) -> ExitInfo {
        ExitInfo::from_status(self.child.wait().await)
    }

    /// SIGTERM to the group, SIGKILL after `grace`; returns how it ended.
    pub async fn terminate(&mut self, grace: Duration) -> ExitInfo {
        signal_group(self.pid, Signal::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                // The leader is gone; make sure nothing it started lingers.
                signal_group(self.pid, Signal::SIGKILL);
                ExitInfo::from_status(status)
            }
            Err(_) => {
                signal_group(self.pid, Signal::SIGKILL);
                ExitInfo::from_status(self.child.wait().await)
            }
        }
    }
}

fn signal_group(pgid: i32, signal: Signal) {
    // ESRCH (group already gone) is the expected, quiet case.
    let _ = killpg(Pid::from_raw(pgid), signal);
}

/// Kills an agent process left behind by a previous manager (one that was
/// SIGKILLed: its children survive it). The pid is checked to still belong
/// to this agent, through its environment, so a reused pid is never hit.
/// Returns whether something was killed.
pub fn kill_orphan(pid: i32, agent_id: Uuid) -> bool {
    let marker = format!("SHEPHERD_AGENT_ID={agent_id}");
    let environ = match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(environ) => environ,
        Err(_) => return false,
    };
    let ours = environ
        .split(|byte| *byte == 0)
        .any(|entry| entry == marker.as_bytes());
    if ours {
        signal_group(pid, Signal::SIGKILL);
    }
    ours
}
