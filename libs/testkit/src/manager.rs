//! One agent-manager under test: a fresh database, the real `agent-manager`
//! binary on loopback (as node `node-a`), and a client. Used by the
//! manager's own integration tests; the end-to-end tests' `Stack` adds the
//! scheduler.

use std::path::{Path, PathBuf};

use shepherd_proto::agentmanager::v1::{self as pb, agent_manager_client::AgentManagerClient};
use tonic::transport::Channel;

use crate::agents::Events;
use crate::{ServiceProcess, TestDb};

pub struct ManagerHarness {
    pub manager: ServiceProcess,
    pub client: AgentManagerClient<Channel>,
    pub db: TestDb,
    pub log_dir: PathBuf,
}

impl ManagerHarness {
    pub async fn start() -> anyhow::Result<Self> {
        let db = TestDb::create().await?;
        let log_dir = std::env::temp_dir().join(format!("shepherd-test-logs-{}", db.name));
        let manager = start_manager(&db, &log_dir, "node-a").await?;
        let client = AgentManagerClient::new(crate::channel(&manager.url()).await?);
        Ok(Self {
            manager,
            client,
            db,
            log_dir,
        })
    }

    /// Starts a new manager process on the same database (after a crash).
    pub async fn restart_manager(&mut self) -> anyhow::Result<()> {
        self.manager = start_manager(&self.db, &self.log_dir, "node-a").await?;
        self.client = AgentManagerClient::new(crate::channel(&self.manager.url()).await?);
        Ok(())
    }

    pub async fn create(&mut self, agent: pb::Agent) -> anyhow::Result<pb::Agent> {
        Ok(self
            .client
            .create_agent(pb::CreateAgentRequest { agent: Some(agent) })
            .await?
            .into_inner())
    }

    pub async fn get(&mut self, id: &str) -> anyhow::Result<pb::Agent> {
        Ok(self
            .client
            .get_agent(pb::GetAgentRequest {
                agent_id: id.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// Watches the agent's events after `after`.
    pub async fn watch(&mut self, after: u64, agent: &str) -> anyhow::Result<Events> {
        let stream = self
            .client
            .watch_agent_events(pb::WatchAgentEventsRequest {
                after_sequence: after,
                agent_id: agent.to_owned(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(Events { stream })
    }
}

impl Drop for ManagerHarness {
    /// Kills the manager, then whatever agents it left, so a test leaves
    /// no process behind.
    fn drop(&mut self) {
        self.manager.kill_now();
        self.db.kill_recorded_agents();
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}

/// Starts a manager as node `node` (a restart under the same name takes its
/// agents back; another name is another node on the same database).
pub async fn start_manager(
    db: &TestDb,
    log_dir: &Path,
    node: &str,
) -> anyhow::Result<ServiceProcess> {
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--stop-grace",
        "2s",
        "--session-heartbeat",
        "300ms",
        "--event-heartbeat",
        "300ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ServiceProcess::start(
        "agent-manager",
        &args,
        &[
            ("DATABASE_URL", db.url.clone()),
            ("AGENT_LOG_DIR", log_dir.display().to_string()),
            ("CGROUP_PARENT", db.cgroup_parent()),
            ("NODE_NAME", node.to_owned()),
            // A restarted manager here listens on a new port, where agents
            // of the old one could never reconnect: these tests cover the
            // replace-on-restart path (live restore is tested end to end in
            // tests/tests/live_restore.rs).
            ("LIVE_RESTORE", "false".to_owned()),
        ],
    )
    .await
}
