//! What `/proc` says about processes: the few facts the manager needs to
//! recognise its agents' processes (start time, parent, environment) and to
//! measure them when no cgroup does.

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on
/// every Linux the manager runs on).
const TICKS_PER_SECOND: u64 = 100;

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcStat {
    pub ppid: i32,
    /// Field 22: start time in clock ticks since boot.
    pub started_at: i64,
    pub zombie: bool,
    /// User plus system CPU time.
    pub cpu_time: Duration,
    /// Resident set size in pages.
    pub rss_pages: u64,
}

impl ProcStat {
    pub(crate) fn read(pid: i32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may hold spaces
        // or parentheses itself: fields are counted after the last ')'.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 (state), so field N is fields[N - 3].
        let number = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
        let ticks = number(14)? + number(15)?;
        Some(Self {
            zombie: fields.first()? == &"Z",
            ppid: fields.get(1)?.parse().ok()?,
            started_at: fields.get(19)?.parse().ok()?,
            cpu_time: Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND),
            rss_pages: number(24)?,
        })
    }
}

/// Whether the process's environment holds exactly `entry` (`NAME=value`).
/// False when it is gone, a zombie (whose environment reads empty) or
/// unreadable.
pub(crate) fn environ_has(pid: i32, entry: &str) -> bool {
    environ_says(pid, entry) == Some(true)
}

/// Like `environ_has`, but None when the environment cannot be read for
/// lack of permission: an agent process makes itself non-dumpable (it
/// holds its session credential), and a manager without `CAP_SYS_PTRACE`
/// cannot read such a process's environment even as its user.
pub(crate) fn environ_says(pid: i32, entry: &str) -> Option<bool> {
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(environ) => Some(
            environ
                .split(|byte| *byte == 0)
                .any(|item| item == entry.as_bytes()),
        ),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => None,
        Err(_) => Some(false),
    }
}

/// Every process id in `/proc` now.
pub(crate) fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The system's page size in bytes.
pub(crate) fn page_size() -> u64 {
    rustix::param::page_size() as u64
}
