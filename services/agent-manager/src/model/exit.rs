//! How an agent's process ended: the supervisor's restart policy and the
//! event log read it; `process` and `kubernetes` produce it.

use crate::model::ExitReason;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExitInfo {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
    /// Killed because its tree exceeded its memory limit.
    pub(crate) oom_killed: bool,
}

impl ExitInfo {
    pub(crate) fn success(self) -> bool {
        self.code == Some(0) && !self.oom_killed
    }

    /// Why it ended, as recorded and reported.
    pub(crate) fn reason(self) -> ExitReason {
        match (self.oom_killed, self.code, self.signal) {
            (true, ..) => ExitReason::OomKilled,
            (false, Some(_), _) => ExitReason::Exited,
            (false, None, Some(_)) => ExitReason::Killed,
            (false, None, None) => ExitReason::Unknown,
        }
    }

    /// It ended; how is not known here.
    pub(crate) const UNKNOWN: Self = Self {
        code: None,
        signal: None,
        oom_killed: false,
    };

    /// Stopped on purpose (SIGTERM, then SIGKILL if need be).
    pub(crate) const TERMINATED: Self = Self {
        code: None,
        signal: Some(15),
        oom_killed: false,
    };
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.oom_killed {
            return f.write_str("killed: its process tree exceeded its memory limit (OOM)");
        }
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (None, None) => f.write_str("ended (status unknown)"),
        }
    }
}
