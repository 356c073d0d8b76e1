//! Agent cgroups, v1 or v2, by direct file I/O.
//!
//! Each agent gets one directory per hierarchy, `<own cgroup>/<parent>/<agent
//! id>`, under the cgroup the manager itself runs in (so the fleet stays
//! inside whatever limits the manager was given). The directory is created
//! before a launch and removed once everything in it is dead; its path
//! depends only on the agent id, so a restarted manager finds the cgroup of
//! a process it adopts.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use uuid::Uuid;

use super::{LimitKind, ResourceLimits, Usage};

/// How often a kill re-checks that the cgroup emptied.
const KILL_POLL: Duration = Duration::from_millis(2);
/// Longest a kill waits for the cgroup to empty (a process stuck in an
/// uninterruptible sleep can outlast SIGKILL for a while).
const KILL_DEADLINE: Duration = Duration::from_secs(10);
/// CFS period used for CPU limits (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    V1,
    V2,
}

/// Where agent cgroups live: per controller (v1) or one directory (v2).
#[derive(Debug, Clone)]
pub(super) struct Hierarchy {
    version: Version,
    /// v1: controller name -> `<mount>/<own path>/<parent>`; v2: one entry,
    /// "unified".
    parents: BTreeMap<&'static str, PathBuf>,
}

/// v1 controllers the manager uses: membership and killing (freezer),
/// limits (memory, cpu, pids) and CPU time (cpuacct).
const V1_CONTROLLERS: [&str; 5] = ["freezer", "memory", "cpu", "cpuacct", "pids"];

impl Hierarchy {
    /// The v1 controllers that are mounted and let the manager create its
    /// parent directory; `None` when none does.
    pub(super) fn v1(parent: &str) -> Option<Self> {
        let mounts = Mounts::read()?;
        let mut parents = BTreeMap::new();
        for controller in V1_CONTROLLERS {
            let Some(dir) = mounts.v1_dir(controller) else {
                continue;
            };
            let dir = dir.join(parent);
            match fs::create_dir_all(&dir) {
                Ok(()) => {
                    parents.insert(controller, dir);
                }
                Err(err) => {
                    tracing::debug!(controller, dir = %dir.display(), error = %err, "cgroup v1 controller not writable");
                }
            }
        }
        (!parents.is_empty()).then_some(Self {
            version: Version::V1,
            parents,
        })
    }

    /// The unified (v2) hierarchy, if mounted and writable. Controllers are
    /// enabled for the agents' parent where the kernel allows it.
    pub(super) fn v2(parent: &str) -> Option<Self> {
        let mounts = Mounts::read()?;
        let own = mounts.v2_dir()?;
        let dir = own.join(parent);
        if let Err(err) = fs::create_dir_all(&dir) {
            tracing::debug!(dir = %dir.display(), error = %err, "cgroup v2 not writable");
            return None;
        }
        for cgroup in [&own, &dir] {
            for controller in ["memory", "cpu", "pids"] {
                // Refused when unavailable, or when `own` holds processes
                // and is not the root: the limits it would carry are then
                // refused at create, which is what `enforces` reports.
                let _ = fs::write(
                    cgroup.join("cgroup.subtree_control"),
                    format!("+{controller}"),
                );
            }
        }
        Some(Self {
            version: Version::V2,
            parents: BTreeMap::from([("unified", dir)]),
        })
    }

    pub(super) fn version(&self) -> Version {
        self.version
    }

    /// Whether a limit of this kind can be applied to an agent's cgroup.
    pub(super) fn enforces(&self, kind: LimitKind) -> bool {
        let controller = kind.controller();
        match self.version {
            Version::V1 => self.parents.contains_key(controller),
            Version::V2 => self.parents.values().next().is_some_and(|dir| {
                fs::read_to_string(dir.join("cgroup.subtree_control"))
                    .is_ok_and(|enabled| enabled.split_whitespace().any(|c| c == controller))
            }),
        }
    }

    /// The agent's cgroup (which may not exist).
    pub(super) fn group(&self, agent: Uuid) -> Group {
        Group {
            version: self.version,
            dirs: self
                .parents
                .iter()
                .map(|(controller, parent)| (*controller, parent.join(agent.to_string())))
                .collect(),
        }
    }
}

/// One agent's cgroup.
#[derive(Debug, Clone)]
pub(super) struct Group {
    version: Version,
    dirs: BTreeMap<&'static str, PathBuf>,
}

impl Group {
    /// Creates the cgroup (emptying what a previous generation left in it)
    /// and applies `limits`.
    pub(super) async fn prepare(&self, limits: &ResourceLimits) -> io::Result<()> {
        if self.exists() {
            self.kill_all().await?;
        }
        for dir in self.dirs.values() {
            match fs::create_dir(dir) {
                Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err),
                _ => {}
            }
        }
        self.apply(limits)
    }

    fn apply(&self, limits: &ResourceLimits) -> io::Result<()> {
        let memory = limits.memory_bytes.map(|bytes| bytes.to_string());
        let pids = limits.max_processes.map(|count| count.to_string());
        let quota = limits
            .cpu_millicores
            .map(|millis| u64::from(millis) * CPU_PERIOD_US / 1000);
        match self.version {
            Version::V1 => {
                if let Some(memory) = &memory {
                    self.write("memory", "memory.limit_in_bytes", memory)?;
                    // Without swap accounting the limit would push the
                    // agent into swap instead of stopping it.
                    let _ = self.write("memory", "memory.memsw.limit_in_bytes", memory);
                }
                if let Some(quota) = quota {
                    self.write("cpu", "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                    self.write("cpu", "cpu.cfs_quota_us", &quota.to_string())?;
                }
                if let Some(pids) = &pids {
                    self.write("pids", "pids.max", pids)?;
                }
            }
            Version::V2 => {
                if let Some(memory) = &memory {
                    self.write("unified", "memory.max", memory)?;
                    let _ = self.write("unified", "memory.swap.max", "0");
                    // An OOM kill takes the whole tree, like a v1 OOM event
                    // does through the manager.
                    self.write("unified", "memory.oom.group", "1")?;
                }
                if let Some(quota) = quota {
                    self.write("unified", "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
                }
                if let Some(pids) = &pids {
                    self.write("unified", "pids.max", pids)?;
                }
            }
        }
        Ok(())
    }

    fn exists(&self) -> bool {
        self.dirs.values().any(|dir| dir.is_dir())
    }

    /// Opens the files a new process writes "0" to, between fork and exec,
    /// to enter this cgroup (in every hierarchy) before it can fork itself.
    ///
    /// In v1 these are the `tasks` files: between fork and exec the child
    /// has one thread, so moving that thread ("0": the writer itself) moves
    /// the whole process, and the kernel skips the global lock a
    /// `cgroup.procs` write takes (its RCU sync cost every launch a grace
    /// period, 6-25 ms, most of a restart). v2 domain cgroups take
    /// processes only.
    pub(super) fn procs_files(&self) -> io::Result<Vec<OwnedFd>> {
        let file = match self.version {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.procs",
        };
        self.dirs
            .values()
            .map(|dir| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join(file))
                    .map(OwnedFd::from)
            })
            .collect()
    }

    /// The processes in the cgroup now.
    pub(super) fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .values()
            .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|line| line.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kills every process in the cgroup, escaped children included, and
    /// returns once it is empty. Frozen first where the kernel offers it,
    /// so nothing can fork while the kill goes round.
    pub(super) async fn kill_all(&self) -> io::Result<()> {
        // The common case (an agent that left nothing behind) costs one
        // read per hierarchy: no freeze.
        if !self.exists() || self.pids().is_empty() {
            return Ok(());
        }
        match self.version {
            Version::V2 if self.has("unified", "cgroup.kill") => {
                self.write("unified", "cgroup.kill", "1")?;
            }
            _ => self.freeze_and_kill().await,
        }
        let deadline = tokio::time::Instant::now() + KILL_DEADLINE;
        loop {
            let left = self.pids();
            if left.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "{} process(es) still in the cgroup after SIGKILL",
                    left.len()
                )));
            }
            // Not frozen: a fork between the read and the kill is caught
            // on the next round.
            signal_all(&left);
            tokio::time::sleep(KILL_POLL).await;
        }
    }

    async fn freeze_and_kill(&self) {
        let (controller, state_file, frozen, thawed) = match self.version {
            Version::V1 => ("freezer", "freezer.state", "FROZEN", "THAWED"),
            Version::V2 => ("unified", "cgroup.freeze", "1", "0"),
        };
        let freezes =
            self.has(controller, state_file) && self.write(controller, state_file, frozen).is_ok();
        if freezes {
            self.wait_frozen(controller, state_file, frozen).await;
        }
        signal_all(&self.pids());
        if freezes {
            // SIGKILL is delivered once the processes thaw.
            let _ = self.write(controller, state_file, thawed);
        }
    }

    async fn wait_frozen(&self, controller: &str, file: &str, frozen: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while tokio::time::Instant::now() < deadline {
            // v1 reads FREEZING until every task stopped; v2 reports it in
            // cgroup.events ("frozen 1").
            let done = match self.version {
                Version::V1 => self
                    .read(controller, file)
                    .is_some_and(|s| s.trim() == frozen),
                Version::V2 => self
                    .read(controller, "cgroup.events")
                    .is_some_and(|events| events.lines().any(|line| line == "frozen 1")),
            };
            if done {
                return;
            }
            tokio::time::sleep(KILL_POLL).await;
        }
    }

    /// Removes the (empty) cgroup.
    pub(super) fn remove(&self) {
        for dir in self.dirs.values() {
            if let Err(err) = fs::remove_dir(dir)
                && err.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %err, "could not remove an agent cgroup");
            }
        }
    }

    /// OOM kills in the cgroup since it was created.
    pub(super) fn oom_kills(&self) -> u64 {
        let (controller, file) = match self.version {
            Version::V1 => ("memory", "memory.oom_control"),
            Version::V2 => ("unified", "memory.events"),
        };
        self.read(controller, file)
            .and_then(|text| keyed(&text, "oom_kill"))
            .unwrap_or(0)
    }

    /// v1: an eventfd the kernel signals when the cgroup runs out of
    /// memory (it then kills one process, not the tree; the manager kills
    /// the rest). None on v2, where `memory.oom.group` does it.
    pub(super) fn oom_eventfd(&self) -> Option<OwnedFd> {
        if self.version != Version::V1 {
            return None;
        }
        let dir = self.dirs.get("memory")?;
        let control = fs::File::open(dir.join("memory.oom_control")).ok()?;
        let eventfd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .ok()?;
        use std::os::fd::AsRawFd;
        let registration = format!(
            "{} {}",
            eventfd.as_fd().as_raw_fd(),
            control.as_fd().as_raw_fd()
        );
        // The kernel keeps its own reference to the control file.
        fs::write(dir.join("cgroup.event_control"), registration).ok()?;
        Some(eventfd)
    }

    /// What the tree uses now.
    pub(super) fn usage(&self) -> Usage {
        match self.version {
            Version::V1 => Usage {
                memory_bytes: self
                    .read("memory", "memory.stat")
                    .and_then(|stat| keyed(&stat, "total_rss"))
                    .unwrap_or(0),
                cpu_time: self
                    .read("cpuacct", "cpuacct.usage")
                    .and_then(|ns| ns.trim().parse().ok())
                    .map(Duration::from_nanos),
                processes: self.process_count(),
                ..Usage::default()
            },
            Version::V2 => Usage {
                memory_bytes: self
                    .read("unified", "memory.stat")
                    .and_then(|stat| keyed(&stat, "anon"))
                    .unwrap_or(0),
                cpu_time: self
                    .read("unified", "cpu.stat")
                    .and_then(|stat| keyed(&stat, "usage_usec"))
                    .map(Duration::from_micros),
                processes: self.process_count(),
                ..Usage::default()
            },
        }
    }

    /// Processes, not threads (`pids.current` counts both); every
    /// hierarchy holds the same ones, so one is read.
    fn process_count(&self) -> u32 {
        let procs = self
            .dirs
            .values()
            .next()
            .and_then(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
            .unwrap_or_default();
        u32::try_from(procs.lines().count()).unwrap_or(u32::MAX)
    }

    fn has(&self, controller: &str, file: &str) -> bool {
        self.dirs
            .get(controller)
            .is_some_and(|dir| dir.join(file).exists())
    }

    fn read(&self, controller: &str, file: &str) -> Option<String> {
        fs::read_to_string(self.dirs.get(controller)?.join(file)).ok()
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> io::Result<()> {
        let dir = self
            .dirs
            .get(controller)
            .ok_or_else(|| io::Error::other(format!("no {controller} cgroup")))?;
        fs::write(dir.join(file), value).map_err(|err| {
            io::Error::new(err.kind(), format!("{}: {err}", dir.join(file).display()))
        })
    }
}

fn signal_all(pids: &[i32]) {
    for pid in pids {
        if let Some(pid) = rustix::process::Pid::from_raw(*pid) {
            // ESRCH: it died meanwhile, which is the point.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// The value of `key` in a "key value" per line file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

/// The cgroup mounts, and which cgroup this process is in.
struct Mounts {
    /// (fstype, mount point, mount root, super options)
    mounts: Vec<(String, PathBuf, String, String)>,
    /// /proc/self/cgroup: (controllers, path); v2 has no controllers.
    own: Vec<(String, String)>,
}

impl Mounts {
    fn read() -> Option<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mounts = mountinfo
            .lines()
            .filter_map(|line| {
                let (before, after) = line.split_once(" - ")?;
                let before: Vec<&str> = before.split(' ').collect();
                let after: Vec<&str> = after.split(' ').collect();
                let fstype = *after.first()?;
                if fstype != "cgroup" && fstype != "cgroup2" {
                    return None;
                }
                Some((
                    fstype.to_owned(),
                    PathBuf::from(before.get(4)?),
                    (*before.get(3)?).to_owned(),
                    (*after.get(2)?).to_owned(),
                ))
            })
            .collect();
        let own = fs::read_to_string("/proc/self/cgroup")
            .ok()?
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ':');
                let _id = parts.next()?;
                Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
            })
            .collect();
        Some(Self { mounts, own })
    }

    /// The directory of this process's cgroup in the v1 hierarchy that
    /// carries `controller`.
    fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        let (_, mount_point, root, _) = self.mounts.iter().find(|(fstype, _, _, options)| {
            fstype == "cgroup" && options.split(',').any(|option| option == controller)
        })?;
        let (_, path) = self
            .own
            .iter()
            .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))?;
        Some(under(mount_point, root, path))
    }

    fn v2_dir(&self) -> Option<PathBuf> {
        let (_, mount_point, root, _) = self
            .mounts
            .iter()
            .find(|(fstype, ..)| fstype == "cgroup2")?;
        let (_, path) = self
            .own
            .iter()
            .find(|(controllers, _)| controllers.is_empty())?;
        Some(under(mount_point, root, path))
    }
}

/// `path` (a cgroup path) as a directory under a mount of `root`.
fn under(mount_point: &Path, root: &str, path: &str) -> PathBuf {
    let relative = path
        .strip_prefix(root)
        .unwrap_or(path)
        .trim_start_matches('/');
    if relative.is_empty() {
        mount_point.to_path_buf()
    } else {
        mount_point.join(relative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_are_read_by_key() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(text, "oom_kill"), Some(3));
        assert_eq!(keyed(text, "under_oom"), Some(0));
        assert_eq!(keyed(text, "missing"), None);
    }

    #[test]
    fn cgroup_paths_are_placed_under_their_mount() {
        let mount = Path::new("/sys/fs/cgroup/memory");
        assert_eq!(under(mount, "/", "/"), mount);
        assert_eq!(under(mount, "/", "/a/b"), mount.join("a/b"));
        assert_eq!(under(mount, "/a", "/a/b"), mount.join("b"));
    }
}
