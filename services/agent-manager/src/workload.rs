//! What a launched generation runs as: a process tree on this node, or a
//! Pod (Kubernetes runtime). The supervisor treats both alike: wait for the
//! end, terminate, clear what is left.

use std::time::Duration;

use crate::kubernetes::AgentPod;
use crate::process::{AgentProcess, ExitInfo};
use crate::store::ProcessIdentity;

pub(crate) enum Workload {
    Process(AgentProcess),
    Pod(AgentPod),
}

impl Workload {
    /// The process id on this node (None: a Pod).
    pub(crate) fn pid(&self) -> Option<i32> {
        match self {
            Self::Process(process) => Some(process.pid()),
            Self::Pod(_) => None,
        }
    }

    /// What names the process for adoption (None: a Pod).
    pub(crate) fn identity(&self) -> Option<ProcessIdentity> {
        match self {
            Self::Process(process) => Some(process.identity()),
            Self::Pod(_) => None,
        }
    }

    /// Resolves when it ended. Cancel-safe.
    pub(crate) async fn wait(&mut self) -> ExitInfo {
        match self {
            Self::Process(process) => process.wait().await,
            Self::Pod(pod) => pod.wait().await,
        }
    }

    /// After it ended: nothing of it may keep running (or lying around).
    pub(crate) async fn clear(self) {
        match self {
            Self::Process(process) => process.clear().await,
            Self::Pod(pod) => pod.clear().await,
        }
    }

    /// Stops it (SIGTERM, SIGKILL after `grace`) and returns how it ended.
    pub(crate) async fn terminate(self, grace: Duration) -> ExitInfo {
        match self {
            Self::Process(process) => process.terminate(grace).await,
            Self::Pod(pod) => pod.terminate(grace).await,
        }
    }
}
