//! Containment without cgroups: the manager is a child subreaper, so an
//! agent's descendants that lose their parent are re-parented to it rather
//! than to init, and an agent's tree is recognised by the marker every
//! agent process inherits in its environment (`SHEPHERD_AGENT_ID=<id>`).
//!
//! Weaker than a cgroup: a process that clears its environment escapes,
//! and nothing is limited. The manager says so at start-up and refuses
//! limits in this mode.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitOptions};
use uuid::Uuid;

use super::Usage;
use crate::procfs::{self, ProcStat};

const KILL_POLL: Duration = Duration::from_millis(2);
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// The subreaper: knows which of its children are agent processes, whose
/// exit statuses belong to their supervisors (tokio reaps them); every
/// other child is a re-parented descendant it reaps itself.
#[derive(Default)]
pub(super) struct Reaper {
    leaders: Mutex<HashSet<i32>>,
}

impl Reaper {
    /// Makes this process the subreaper of its descendants.
    pub(super) fn install() -> std::io::Result<Self> {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
        Ok(Self::default())
    }

    /// An agent process this manager launched (its supervisor reaps it).
    pub(super) fn launched(&self, pid: i32) {
        self.lock().insert(pid);
    }

    /// Its supervisor has reaped it.
    pub(super) fn reaped(&self, pid: i32) {
        self.lock().remove(&pid);
    }

    /// Kills every process carrying `agent`'s marker and returns once none
    /// is left.
    pub(super) async fn kill_all(&self, agent: Uuid) -> std::io::Result<()> {
        let deadline = tokio::time::Instant::now() + KILL_DEADLINE;
        loop {
            let tree = members(agent);
            self.reap_orphans();
            if tree.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(std::io::Error::other(format!(
                    "{} process(es) of the agent still alive after SIGKILL",
                    tree.len()
                )));
            }
            for pid in tree {
                if let Some(pid) = Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
            tokio::time::sleep(KILL_POLL).await;
        }
    }

    /// Reaps the re-parented descendants that have exited (never an agent
    /// process: its status is its supervisor's).
    pub(super) fn reap_orphans(&self) {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let leaders = self.lock().clone();
        for pid in procfs::all_pids() {
            if leaders.contains(&pid) {
                continue;
            }
            let Some(stat) = ProcStat::read(pid) else {
                continue;
            };
            if stat.ppid == me
                && stat.zombie
                && let Some(pid) = Pid::from_raw(pid)
            {
                let _ = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.leaders.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The live processes of an agent's tree.
fn members(agent: Uuid) -> Vec<i32> {
    let marker = super::marker(agent);
    procfs::all_pids()
        .into_iter()
        .filter(|pid| procfs::environ_has(*pid, &marker))
        .collect()
}

/// What the agent's live processes use (exited descendants' CPU time is
/// not counted: only a cgroup keeps it).
pub(super) fn usage(agent: Uuid) -> Usage {
    let page = procfs::page_size();
    let mut usage = Usage {
        cpu_time: Some(Duration::ZERO),
        ..Usage::default()
    };
    for pid in members(agent) {
        if let Some(stat) = ProcStat::read(pid) {
            usage.memory_bytes += stat.rss_pages * page;
            usage.cpu_time = usage.cpu_time.map(|total| total + stat.cpu_time);
            usage.processes += 1;
        }
    }
    usage
}
