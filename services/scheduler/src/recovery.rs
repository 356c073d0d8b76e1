//! Bringing runners back. Two of the three recovery mechanisms live here
//! (the third, resuming the event stream, is in `consumer`):
//!
//! * edge: `restart_workflows_for_agent` on `AgentRestarted` / `AgentReady`;
//! * level: `level_pass` compares desired runners (enabled workflows whose
//!   agent is ready) with live ones and fixes the difference.
//!
//! Both only ever call `Runners::ensure_running`, whose atomic claim makes
//! them idempotent and safe to race with each other and with the API.

use std::collections::HashSet;
use std::sync::Arc;

use uuid::Uuid;

use crate::agents::AgentView;
use crate::error::{Error, Result};
use crate::manager_client::ManagerClient;
use crate::runner::{Runners, StartOutcome};
use crate::store::Store;

pub struct Recovery {
    pub store: Store,
    pub runners: Arc<Runners>,
    pub agents: Arc<AgentView>,
    pub manager: ManagerClient,
}

/// What a level pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LevelReport {
    pub desired: usize,
    pub started: usize,
    pub stopped: usize,
}

impl Recovery {
    /// Starts the runners missing for the agent's enabled workflows (one
    /// indexed query by agent id). Returns how many were started.
    pub async fn restart_workflows_for_agent(&self, agent: Uuid) -> Result<usize> {
        let workflows = self.store.enabled_workflows_of(&[agent]).await?;
        let started = workflows
            .iter()
            .filter(|w| self.runners.ensure_running(w.id, w.agent_id) == StartOutcome::Started)
            .count();
        if started > 0 {
            tracing::info!(%agent, started, "restarted missing runners for agent");
        }
        Ok(started)
    }

    /// The level-triggered pass.
    pub async fn level_pass(&self) -> Result<LevelReport> {
        let ready = self.manager.ready_agents().await.map_err(|status| {
            Error::Unavailable(format!("agent-manager unavailable: {}", status.message()))
        })?;
        self.agents.replace(&ready);
        let ready: Vec<Uuid> = ready.into_iter().collect();
        let desired = self.store.enabled_workflows_of(&ready).await?;
        let mut report = LevelReport {
            desired: desired.len(),
            ..LevelReport::default()
        };
        for workflow in &desired {
            if self.runners.ensure_running(workflow.id, workflow.agent_id) == StartOutcome::Started
            {
                report.started += 1;
            }
        }
        // Runners whose workflow is gone or disabled must not linger.
        let live = self.runners.live_workflows();
        if !live.is_empty() {
            let enabled: HashSet<Uuid> =
                self.store.enabled_among(&live).await?.into_iter().collect();
            for workflow in live.into_iter().filter(|id| !enabled.contains(id)) {
                self.runners.stop(workflow, "workflow disabled");
                report.stopped += 1;
            }
        }
        if report.started > 0 || report.stopped > 0 {
            tracing::info!(?report, "level pass fixed runners");
        }
        Ok(report)
    }
}
