//! Containment: every agent's process tree in one container the manager can
//! kill as a whole, limit and measure.
//!
//! An agent is a tree (the agent, the shells and CLIs its tasks start, and
//! whatever those start, daemons included). The manager only launches the
//! root, so it needs the kernel to keep the tree together: a cgroup (v2, or
//! v1 controllers) where one is writable, else the child-subreaper fallback
//! (see `subreaper`). Whatever the mode, when an agent's process ends the
//! supervisor kills the rest of its tree (`Cell::clear`) before it reports
//! the generation's tasks lost or launches the next generation: a retry can
//! never run beside its predecessor.

mod cgroup;
mod subreaper;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;
use cgroup::{Group, Hierarchy, Version};
use subreaper::Reaper;

/// Which containment to use (configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeChoice {
    /// cgroup v2 if it is the system's hierarchy, else cgroup v1
    /// controllers, else the subreaper.
    Auto,
    CgroupV2,
    CgroupV1,
    Subreaper,
}

/// The active mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    CgroupV2,
    CgroupV1,
    Subreaper,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CgroupV2 => "cgroup-v2",
            Self::CgroupV1 => "cgroup-v1",
            Self::Subreaper => "subreaper",
        }
    }
}

/// Per-agent resource limits (a part of the agent spec; absent: none, or
/// the manager's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u32>,
}

/// Smallest memory limit accepted: below it not even a shell starts.
pub const MIN_MEMORY_BYTES: u64 = 4 * 1024 * 1024;
/// Largest CPU limit accepted, in cores.
pub const MAX_CPU_CORES: f64 = 1024.0;

impl ResourceLimits {
    /// Limits from client input (0 or absent: none), checked for sense.
    pub fn validated(
        memory_bytes: Option<u64>,
        cpu_cores: Option<f64>,
        max_processes: Option<u32>,
    ) -> Result<Self, Error> {
        let memory_bytes = memory_bytes.filter(|bytes| *bytes != 0);
        if memory_bytes.is_some_and(|bytes| bytes < MIN_MEMORY_BYTES) {
            return Err(Error::invalid(
                "agent.limits.memory_bytes",
                format!("must be 0 (none) or at least {MIN_MEMORY_BYTES} bytes (4 MiB)"),
            ));
        }
        let cpu_cores = cpu_cores.filter(|cores| *cores != 0.0);
        let cpu_millicores = match cpu_cores {
            None => None,
            Some(cores) if cores.is_finite() && (0.001..=MAX_CPU_CORES).contains(&cores) => {
                Some((cores * 1000.0).round() as u32)
            }
            Some(_) => {
                return Err(Error::invalid(
                    "agent.limits.cpu_cores",
                    format!("must be 0 (none) or between 0.001 and {MAX_CPU_CORES} cores"),
                ));
            }
        };
        Ok(Self {
            memory_bytes,
            cpu_millicores,
            max_processes: max_processes.filter(|count| *count != 0),
        })
    }

    /// Each limit from `self`, or else from `defaults`.
    pub fn or(self, defaults: Self) -> Self {
        Self {
            memory_bytes: self.memory_bytes.or(defaults.memory_bytes),
            cpu_millicores: self.cpu_millicores.or(defaults.cpu_millicores),
            max_processes: self.max_processes.or(defaults.max_processes),
        }
    }

    fn kinds(&self) -> impl Iterator<Item = LimitKind> {
        [
            self.memory_bytes.map(|_| LimitKind::Memory),
            self.cpu_millicores.map(|_| LimitKind::Cpu),
            self.max_processes.map(|_| LimitKind::Processes),
        ]
        .into_iter()
        .flatten()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Memory,
    Cpu,
    Processes,
}

impl LimitKind {
    fn controller(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Cpu => "cpu",
            Self::Processes => "pids",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Self::Memory => "memory_bytes",
            Self::Cpu => "cpu_cores",
            Self::Processes => "max_processes",
        }
    }
}

/// What an agent's whole tree uses now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Resident (anonymous) memory.
    pub memory_bytes: u64,
    /// CPU time since launch, where the mode measures it.
    pub cpu_time: Option<Duration>,
    /// Cores used since the previous reading (0 on the first).
    pub cpu_cores: f64,
    pub processes: u32,
}

/// The manager's containment: the mode, and what it reads.
pub struct Containment {
    backend: Backend,
    defaults: ResourceLimits,
    /// The previous CPU reading per agent, for the rate.
    samples: Mutex<HashMap<Uuid, (Instant, Duration)>>,
    /// Agents whose processes are contained now, by name (for metrics).
    running: Running,
}

type Running = Arc<Mutex<HashMap<Uuid, String>>>;

enum Backend {
    Cgroup(Hierarchy),
    Subreaper(Arc<Reaper>),
}

impl Containment {
    /// Detects (or takes the configured) mode and logs which is active.
    /// `parent` names the directory agents' cgroups go in, under the
    /// manager's own cgroup.
    pub fn start(
        choice: ModeChoice,
        parent: &str,
        defaults: ResourceLimits,
    ) -> anyhow::Result<Self> {
        let v2_native = std::fs::metadata("/sys/fs/cgroup/cgroup.controllers").is_ok();
        let hierarchy = match choice {
            ModeChoice::Auto if v2_native => Hierarchy::v2(parent),
            ModeChoice::Auto => Hierarchy::v1(parent).or_else(|| Hierarchy::v2(parent)),
            ModeChoice::CgroupV1 => Some(Hierarchy::v1(parent).ok_or_else(|| {
                anyhow::anyhow!("CONTAINMENT=cgroup-v1: no writable cgroup v1 controller")
            })?),
            ModeChoice::CgroupV2 => Some(Hierarchy::v2(parent).ok_or_else(|| {
                anyhow::anyhow!("CONTAINMENT=cgroup-v2: no writable cgroup v2 hierarchy")
            })?),
            ModeChoice::Subreaper => None,
        };
        let backend = match hierarchy {
            Some(hierarchy) => Backend::Cgroup(hierarchy),
            None => Backend::Subreaper(Arc::new(Reaper::install()?)),
        };
        let containment = Self {
            backend,
            defaults,
            samples: Mutex::new(HashMap::new()),
            running: Running::default(),
        };
        containment
            .check(&defaults)
            .map_err(|err| anyhow::anyhow!("the default agent limits cannot be enforced: {err}"))?;
        match containment.mode() {
            Mode::Subreaper => tracing::warn!(
                mode = "subreaper",
                "no writable cgroup: agents are contained by the child-subreaper fallback (their trees are killed as a whole, but resource limits are refused)"
            ),
            mode => tracing::info!(mode = mode.as_str(), "agents are contained in cgroups"),
        }
        Ok(containment)
    }

    pub fn mode(&self) -> Mode {
        match &self.backend {
            Backend::Cgroup(hierarchy) => match hierarchy.version() {
                Version::V1 => Mode::CgroupV1,
                Version::V2 => Mode::CgroupV2,
            },
            Backend::Subreaper(_) => Mode::Subreaper,
        }
    }

    /// Whether limits of this kind are enforced.
    pub fn enforces(&self, kind: LimitKind) -> bool {
        match &self.backend {
            Backend::Cgroup(hierarchy) => hierarchy.enforces(kind),
            Backend::Subreaper(_) => false,
        }
    }

    /// The limits of agents whose spec leaves them unset.
    pub fn defaults(&self) -> ResourceLimits {
        self.defaults
    }

    /// Refuses limits the active mode cannot enforce (a limit silently
    /// ignored would be worse than none).
    pub fn check(&self, limits: &ResourceLimits) -> Result<(), Error> {
        for kind in limits.kinds() {
            if !self.enforces(kind) {
                return Err(Error::failed_precondition(format!(
                    "agent.limits.{}: this manager cannot enforce it (containment mode {}, no writable {} controller); leave it unset or run the manager where that cgroup controller is writable",
                    kind.field(),
                    self.mode().as_str(),
                    kind.controller()
                )));
            }
        }
        Ok(())
    }

    /// Prepares the container of an agent's next process: whatever an
    /// earlier generation left is killed, and the limits (the spec's, or
    /// the manager's defaults) are applied.
    pub async fn prepare(
        &self,
        agent: Uuid,
        name: &str,
        limits: ResourceLimits,
    ) -> std::io::Result<Cell> {
        let cell = self.cell(agent);
        match &cell.kind {
            CellKind::Cgroup(group) => group.prepare(&limits.or(self.defaults)).await?,
            CellKind::Subreaper(reaper) => reaper.kill_all(agent).await?,
        }
        self.lock_samples().remove(&agent);
        Ok(self.adopted(agent, name))
    }

    /// The container of a running process a previous manager launched.
    pub fn adopted(&self, agent: Uuid, name: &str) -> Cell {
        lock(&self.running).insert(agent, name.to_owned());
        self.cell(agent)
    }

    /// The container of an agent (to clear what a previous manager left).
    pub fn cell(&self, agent: Uuid) -> Cell {
        let kind = match &self.backend {
            Backend::Cgroup(hierarchy) => CellKind::Cgroup(hierarchy.group(agent)),
            Backend::Subreaper(reaper) => CellKind::Subreaper(reaper.clone()),
        };
        Cell {
            agent,
            kind,
            running: self.running.clone(),
        }
    }

    /// The agents whose processes are contained now, with their names.
    pub fn running(&self) -> Vec<(Uuid, String)> {
        lock(&self.running)
            .iter()
            .map(|(id, name)| (*id, name.clone()))
            .collect()
    }

    /// What the agent's tree uses now; None when nothing of it runs.
    pub fn usage(&self, agent: Uuid) -> Option<Usage> {
        let mut usage = match &self.backend {
            Backend::Cgroup(hierarchy) => hierarchy.group(agent).usage(),
            Backend::Subreaper(_) => subreaper::usage(agent),
        };
        if usage.processes == 0 {
            return None;
        }
        if let Some(cpu) = usage.cpu_time {
            let now = Instant::now();
            let mut samples = self.lock_samples();
            if let Some((at, before)) = samples.insert(agent, (now, cpu)) {
                let wall = now.duration_since(at).as_secs_f64();
                if wall > 0.0 {
                    usage.cpu_cores = cpu.saturating_sub(before).as_secs_f64() / wall;
                }
            }
        }
        Some(usage)
    }

    fn lock_samples(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Instant, Duration)>> {
        lock(&self.samples)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The environment entry every process of an agent's tree inherits.
pub fn marker(agent: Uuid) -> String {
    format!("SHEPHERD_AGENT_ID={agent}")
}

/// One agent's container.
pub struct Cell {
    agent: Uuid,
    kind: CellKind,
    running: Running,
}

enum CellKind {
    Cgroup(Group),
    Subreaper(Arc<Reaper>),
}

impl Cell {
    /// Makes `command`'s child enter this container between fork and exec
    /// (it writes "0" to each hierarchy's `cgroup.procs`, v1's `tasks`:
    /// see `Group::procs_files`), before it can
    /// start anything. Keep the returned descriptors until `spawn` returns.
    /// Nothing to do for the subreaper, which finds the tree by its
    /// environment.
    pub fn enter_on_exec(
        &self,
        command: &mut tokio::process::Command,
    ) -> std::io::Result<Vec<OwnedFd>> {
        let files = match &self.kind {
            CellKind::Cgroup(group) => group.procs_files()?,
            CellKind::Subreaper(_) => return Ok(Vec::new()),
        };
        let fds: Vec<i32> = files.iter().map(AsRawFd::as_raw_fd).collect();
        // SAFETY: between fork and exec the closure only makes write(2)
        // system calls on descriptors opened before the fork (kept open by
        // the caller until `spawn` returns); it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                for fd in &fds {
                    let fd = std::os::fd::BorrowedFd::borrow_raw(*fd);
                    rustix::io::write(fd, b"0").map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
        Ok(files)
    }

    /// The agent's process was launched as `pid`.
    pub fn launched(&self, pid: i32) {
        if let CellKind::Subreaper(reaper) = &self.kind {
            reaper.launched(pid);
        }
    }

    /// Kills everything in the container and returns once nothing is left
    /// (or gives up, logging why, after a deadline).
    pub async fn kill_all(&self) {
        let result = match &self.kind {
            CellKind::Cgroup(group) => group.kill_all().await,
            CellKind::Subreaper(reaper) => reaper.kill_all(self.agent).await,
        };
        if let Err(err) = result {
            tracing::error!(agent = %self.agent, error = %err, "could not kill the agent's whole process tree");
        }
    }

    /// The agent's process `leader` has been reaped: kill what is left of
    /// its tree and remove the container.
    pub async fn clear(&self, leader: i32) {
        self.kill_all().await;
        lock(&self.running).remove(&self.agent);
        match &self.kind {
            CellKind::Cgroup(group) => group.remove(),
            CellKind::Subreaper(reaper) => reaper.reaped(leader),
        }
    }

    /// OOM kills in the container so far.
    pub fn oom_kills(&self) -> u64 {
        match &self.kind {
            CellKind::Cgroup(group) => group.oom_kills(),
            CellKind::Subreaper(_) => 0,
        }
    }

    /// An eventfd readable on an OOM in the container, where the kernel
    /// does not kill the whole tree by itself (cgroup v1).
    pub fn oom_eventfd(&self) -> Option<OwnedFd> {
        match &self.kind {
            CellKind::Cgroup(group) => group.oom_eventfd(),
            CellKind::Subreaper(_) => None,
        }
    }

    /// Kills the whole tree in the background (it completes even if the
    /// caller is cancelled, so a freeze is always thawed).
    pub fn kill_all_detached(&self) {
        if let CellKind::Cgroup(group) = &self.kind {
            let group = group.clone();
            let agent = self.agent;
            tokio::spawn(async move {
                if let Err(err) = group.kill_all().await {
                    tracing::error!(agent = %agent, error = %err, "could not kill the agent's whole process tree");
                }
            });
        }
    }
}
