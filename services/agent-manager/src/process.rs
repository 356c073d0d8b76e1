//! Agent processes: spawned in their own process group, their output
//! written straight to log files, terminated as a group (SIGTERM, then
//! SIGKILL after a grace period).
//!
//! A process outlives the manager that launched it (live restore): it
//! writes to files rather than pipes, so nothing breaks when the manager
//! goes away, and a restarted manager adopts it (`AgentProcess::adopt`),
//! watching it through a pidfd since it is no longer the parent.

use std::io;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::containment::{Cell, marker};
use crate::logs::LogDir;
use crate::model::AgentSpec;
pub(crate) use crate::model::ExitInfo;
use crate::procfs::{ProcStat, environ_says};
use crate::store::ProcessIdentity;

/// How a process ended, from its wait status. Waiting failed: the
/// process is gone as far as we can tell.
fn exit_from_status(status: io::Result<ExitStatus>) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => ExitInfo {
            code: status.code(),
            signal: status.signal(),
            oom_killed: false,
        },
        Err(_) => ExitInfo::UNKNOWN,
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
pub(crate) struct Launch<'a> {
    pub agent_id: Uuid,
    pub agent_name: &'a str,
    pub spec: &'a AgentSpec,
    pub generation: u64,
    pub session_token: &'a str,
    pub manager_url: &'a str,
    pub manager_ca_file: Option<&'a std::path::Path>,
    /// The user the process runs as (None: the manager's).
    pub run_as: Option<AgentUser>,
}

/// A user agent processes run as (`SHEPHERD_AGENT_USER`), resolved once at
/// start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AgentUser {
    pub uid: u32,
    pub gid: u32,
}

impl AgentUser {
    /// Resolves a user name (or numeric uid) on this host. Only root can
    /// start processes as another user, so anyone else is told so.
    pub(crate) fn resolve(name: &str) -> Result<Self, String> {
        let user = match name.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(name),
        }
        .map_err(|err| format!("SHEPHERD_AGENT_USER: cannot look up the user: {err}"))?
        .ok_or_else(|| {
            format!(
                "SHEPHERD_AGENT_USER: no user {} on this host",
                shepherd_platform::validate::quote(name)
            )
        })?;
        if !nix::unistd::geteuid().is_root() {
            return Err("SHEPHERD_AGENT_USER needs the agent-manager to run as root".to_owned());
        }
        Ok(Self {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }
}

/// A running agent process, owned by its supervisor, and the container
/// of its tree.
pub(crate) struct AgentProcess {
    identity: ProcessIdentity,
    exit: ExitWatch,
    cell: Cell,
    /// Readable when the container runs out of memory (cgroup v1).
    oom_events: Option<AsyncFd<OwnedFd>>,
    /// OOM kills the container had counted when this process took it over.
    oom_baseline: u64,
    /// An OOM event arrived, and the tree was killed for it.
    oom_killed: bool,
}

/// How the supervisor learns that the process ended.
enum ExitWatch {
    /// Launched by this manager: its child, with its exit status.
    Child(Child),
    /// Adopted from a previous manager: a pidfd, readable once it exits
    /// (its status went to whoever reaps it, so it is unknown here).
    Adopted(AsyncFd<OwnedFd>),
}

impl AgentProcess {
    /// Launches the agent inside `cell` (prepared for it).
    pub(crate) fn spawn(launch: &Launch<'_>, logs: &LogDir, cell: Cell) -> io::Result<Self> {
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
            // Its own group: signals reach the agent's children too, and a
            // Ctrl-C at the manager's terminal does not reach the agent.
            .process_group(0);
        // Files, not pipes: a pipe would break (SIGPIPE) when the manager
        // exits, and the agent must outlive it.
        match logs.open(launch.agent_id) {
            Ok((stdout, stderr)) => command.stdout(stdout).stderr(stderr),
            Err(err) => {
                tracing::warn!(agent = %launch.agent_id, error = %err, "cannot open the agent's log files; its output is discarded");
                command.stdout(Stdio::null()).stderr(Stdio::null())
            }
        };
        if let Some(ca) = launch.manager_ca_file {
            command.env("SHEPHERD_MANAGER_CA_FILE", ca);
        }
        if let Some(dir) = &spec.working_dir {
            command.current_dir(dir);
        }
        // The child enters its container before exec, so nothing it starts
        // is ever outside it.
        let entry_files = cell.enter_on_exec(&mut command)?;
        if let Some(user) = launch.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        // After the container entry (it may need the manager's rights): no
        // new privileges, and no capabilities for an agent left as root.
        // SAFETY: `drop_privileges` makes raw system calls only.
        unsafe {
            command.pre_exec(shepherd_platform::hardening::drop_privileges);
        }
        let child = command.spawn()?;
        drop(entry_files);
        let pid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .ok_or_else(|| io::Error::other("spawned process has no pid"))?;
        cell.launched(pid);
        // Unknown (0) if it already exited: such a process is never adopted.
        let started_at = ProcStat::read(pid).map_or(0, |stat| stat.started_at);
        Ok(Self::contained(
            ProcessIdentity { pid, started_at },
            ExitWatch::Child(child),
            cell,
        ))
    }

    fn contained(identity: ProcessIdentity, exit: ExitWatch, cell: Cell) -> Self {
        let oom_events = cell.oom_eventfd().and_then(|fd| {
            // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which owns
            // it (and keeps it open) from then on.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
        });
        Self {
            identity,
            exit,
            oom_baseline: cell.oom_kills(),
            oom_killed: false,
            oom_events,
            cell,
        }
    }

    /// Takes over a process a previous manager launched, if `identity`
    /// still names it and it is still this agent's, of this generation
    /// (checked in its environment). `None` when it is gone or is not ours.
    pub(crate) fn adopt(
        identity: ProcessIdentity,
        agent_id: Uuid,
        generation: u64,
        cell: Cell,
    ) -> Option<Self> {
        match Self::try_adopt(identity, agent_id, generation, cell) {
            Ok(process) => Some(process),
            Err(why) => {
                tracing::info!(agent = %agent_id, pid = identity.pid, why, "not adopting the recorded process");
                None
            }
        }
    }

    fn try_adopt(
        identity: ProcessIdentity,
        agent_id: Uuid,
        generation: u64,
        cell: Cell,
    ) -> Result<Self, &'static str> {
        let pid = rustix::process::Pid::from_raw(identity.pid).ok_or("no such pid")?;
        // Open the pidfd first: from then on the pid cannot be reused under
        // us, so the checks below are about the process the fd watches.
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .map_err(|_| "the process is gone")?;
        let stat = ProcStat::read(identity.pid).ok_or("the process is gone")?;
        if identity.started_at == 0 || stat.started_at != identity.started_at {
            return Err("the pid now names another process");
        }
        if stat.zombie {
            return Err("the process has exited");
        }
        // Unreadable (a non-dumpable agent, a manager without
        // CAP_SYS_PTRACE): the pid and its start time, checked above, name
        // the process launched.
        let marked = |entry: &str| environ_says(identity.pid, entry) != Some(false);
        if !marked(&marker(agent_id)) || !marked(&format!("SHEPHERD_GENERATION={generation}")) {
            return Err("it is not this agent's process of this generation");
        }
        // SAFETY: the fd is an `OwnedFd` moved into the `AsyncFd`: it stays
        // open, and names the same pidfd, until the `AsyncFd` drops it.
        let exit = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(|_| "its pidfd cannot be watched")?;
        Ok(Self::contained(identity, ExitWatch::Adopted(exit), cell))
    }

    pub(crate) fn pid(&self) -> i32 {
        self.identity.pid
    }

    pub(crate) fn identity(&self) -> ProcessIdentity {
        self.identity
    }

    /// Waits for the process to exit. An OOM in its container (cgroup v1,
    /// where the kernel kills one process) kills the whole tree, so the
    /// agent ends OOM-killed as it would under v2's `memory.oom.group`.
    /// Cancel-safe.
    pub(crate) async fn wait(&mut self) -> ExitInfo {
        loop {
            let woke = {
                let exit = &mut self.exit;
                let events = &self.oom_events;
                tokio::select! {
                    exit = Self::leader_exit(exit) => Ok(exit),
                    () = oom_event(events) => Err(()),
                }
            };
            match woke {
                Ok(exit) => {
                    return ExitInfo {
                        oom_killed: self.oom_killed || self.cell.oom_kills() > self.oom_baseline,
                        ..exit
                    };
                }
                Err(()) => {
                    // The kernel signals before its OOM killer has picked
                    // (and counted) a victim: act on the event itself.
                    tracing::warn!(
                        pid = self.pid(),
                        "the agent's process tree ran out of memory; killing all of it"
                    );
                    self.oom_killed = true;
                    self.cell.kill_all_detached();
                }
            }
        }
    }

    async fn leader_exit(exit: &mut ExitWatch) -> ExitInfo {
        match exit {
            ExitWatch::Child(child) => exit_from_status(child.wait().await),
            ExitWatch::Adopted(pidfd) => {
                // Readable means exited; an error means the same as far as
                // this manager can tell.
                let _ = pidfd.readable().await;
                ExitInfo::UNKNOWN
            }
        }
    }

    /// After the process ended: kills what is left of its tree (escaped
    /// children included) and returns once nothing of it runs.
    pub(crate) async fn clear(self) {
        signal_group(self.pid(), Signal::SIGKILL);
        self.cell.clear(self.pid()).await;
    }

    /// SIGTERM to the group, SIGKILL to the whole tree after `grace`;
    /// returns how it ended, once nothing of the tree runs.
    pub(crate) async fn terminate(mut self, grace: Duration) -> ExitInfo {
        signal_group(self.pid(), Signal::SIGTERM);
        let exit = match tokio::time::timeout(grace, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                signal_group(self.pid(), Signal::SIGKILL);
                self.cell.kill_all().await;
                self.wait().await
            }
        };
        self.clear().await;
        exit
    }
}

/// Resolves on the next OOM event (never without an eventfd).
async fn oom_event(events: &Option<AsyncFd<OwnedFd>>) {
    let Some(events) = events else {
        return std::future::pending().await;
    };
    if let Ok(mut ready) = events.readable().await {
        let mut count = [0u8; 8];
        // Reading resets the eventfd's counter; readiness that arrives
        // after this read survives `clear_ready`.
        let _ = rustix::io::read(events.get_ref(), &mut count);
        ready.clear_ready();
    }
}

fn signal_group(pgid: i32, signal: Signal) {
    // ESRCH (group already gone) is the expected, quiet case.
    let _ = killpg(Pid::from_raw(pgid), signal);
}

/// Kills an agent process left behind by a previous manager that cannot be
/// adopted (live restore is off, or it is not the recorded process). The
/// pid is checked to still belong to this agent, through its environment,
/// so a reused pid is never hit. Returns whether something was killed.
///
/// An environment the manager may not read proves nothing by itself; the
/// process is then ours if it started when the recorded one did.
pub(crate) fn kill_orphan(pid: i32, agent_id: Uuid, started_at: Option<i64>) -> bool {
    let ours = match environ_says(pid, &marker(agent_id)) {
        Some(ours) => ours,
        None => started_at.is_some_and(|started_at| {
            started_at != 0 && ProcStat::read(pid).is_some_and(|stat| stat.started_at == started_at)
        }),
    };
    if ours {
        signal_group(pid, Signal::SIGKILL);
    }
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_read_and_stable() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let first = ProcStat::read(pid).unwrap();
        assert!(first.started_at > 0);
        assert!(!first.zombie);
        assert_eq!(ProcStat::read(pid).unwrap().started_at, first.started_at);
    }

    #[tokio::test]
    async fn a_process_of_another_agent_or_generation_is_not_adopted() {
        let agent = Uuid::new_v4();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("SHEPHERD_AGENT_ID", agent.to_string())
            .env("SHEPHERD_GENERATION", "3")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // `spawn` returns while execve may still be setting up the new
        // image, whose environment /proc shows only once it is done (a
        // manager adopts processes long after that).
        let marker = format!("SHEPHERD_AGENT_ID={agent}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap_or_default()
            .split(|byte| *byte == 0)
            .any(|entry| entry == marker.as_bytes())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never exec'd"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started_at = ProcStat::read(pid).unwrap().started_at;
        let identity = ProcessIdentity { pid, started_at };
        let containment = crate::containment::Containment::start(
            crate::containment::ModeChoice::Subreaper,
            "unused",
            crate::containment::ResourceLimits::default(),
        )
        .unwrap();
        let cell = || containment.cell(agent);
        assert!(AgentProcess::adopt(identity, Uuid::new_v4(), 3, cell()).is_none());
        assert!(AgentProcess::adopt(identity, agent, 4, cell()).is_none());
        let stale = ProcessIdentity {
            pid,
            started_at: started_at + 1,
        };
        assert!(AgentProcess::adopt(stale, agent, 3, cell()).is_none());
        let mut adopted = match AgentProcess::try_adopt(identity, agent, 3, cell()) {
            Ok(adopted) => adopted,
            Err(why) => panic!("not adopted: {why}"),
        };
        child.kill().unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), adopted.wait()).await;
        assert!(exit.is_ok(), "the pidfd reports the exit");
        child.wait().unwrap();
    }
}
