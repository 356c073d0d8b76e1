//! Harness for the agent-manager's integration tests: a fresh database, the
//! real `agent-manager` binary on loopback, the real reference agent.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)] // each test file uses a different part of the harness

use std::time::Duration;

use shepherd_proto::agentmanager::v1::{self as pb, agent_manager_client::AgentManagerClient};
use shepherd_testkit::{ServiceProcess, TestDb};
use tonic::transport::Channel;

pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) struct Harness {
    pub manager: ServiceProcess,
    pub client: AgentManagerClient<Channel>,
    pub db: TestDb,
    pub log_dir: std::path::PathBuf,
}

impl Harness {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let db = TestDb::create().await?;
        let log_dir = std::env::temp_dir().join(format!("shepherd-test-logs-{}", db.name));
        let manager = start_manager(&db, &log_dir, "node-a").await?;
        let client = AgentManagerClient::new(shepherd_testkit::channel(&manager.url()).await?);
        Ok(Self {
            manager,
            client,
            db,
            log_dir,
        })
    }

    /// Starts a new manager process on the same database (after a crash).
    pub(crate) async fn restart_manager(&mut self) -> anyhow::Result<()> {
        self.manager = start_manager(&self.db, &self.log_dir, "node-a").await?;
        self.client =
            AgentManagerClient::new(shepherd_testkit::channel(&self.manager.url()).await?);
        Ok(())
    }

    pub(crate) async fn create(&mut self, agent: pb::Agent) -> anyhow::Result<pb::Agent> {
        Ok(self
            .client
            .create_agent(pb::CreateAgentRequest { agent: Some(agent) })
            .await?
            .into_inner())
    }

    pub(crate) async fn get(&mut self, id: &str) -> anyhow::Result<pb::Agent> {
        Ok(self
            .client
            .get_agent(pb::GetAgentRequest {
                agent_id: id.to_owned(),
            })
            .await?
            .into_inner())
    }

    pub(crate) async fn watch(&mut self, after: u64, agent: &str) -> anyhow::Result<Events> {
        let stream = self
            .client
            .watch_agent_events(pb::WatchAgentEventsRequest {
                after_sequence: after,
                agent_id: agent.to_owned(),
            })
            .await?
            .into_inner();
        Ok(Events { stream })
    }
}

impl Drop for Harness {
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
pub(crate) async fn start_manager(
    db: &TestDb,
    log_dir: &std::path::Path,
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

/// An agent running the reference agent, with a fast restart policy
/// (10 restarts a minute, so a crash loop ends FAILED soon).
pub(crate) fn reference_agent(name: &str, mode: pb::RestartMode) -> pb::Agent {
    shepherd_testkit::agents::reference_agent(name, mode, 10)
        .unwrap_or_else(|err| panic!("the reference agent: {err}"))
}

pub(crate) use shepherd_testkit::agents::Events;

/// Short name of an event's kind, for readable assertions (the name the
/// manager stores in its `kind` column).
pub(crate) fn kind(event: &pb::AgentEvent) -> &'static str {
    shepherd_agent_manager::events::kind_name(event.kind.as_ref())
}

pub(crate) fn kinds(events: &[pb::AgentEvent]) -> Vec<&'static str> {
    events.iter().map(kind).collect()
}

pub(crate) fn is_ready(event: &pb::AgentEvent) -> bool {
    kind(event) == "ready"
}

/// SIGKILL a process, as a crash would.
pub(crate) fn kill9(pid: i32) {
    if let Err(err) = shepherd_testkit::agents::kill9(pid) {
        panic!("kill -9 {pid}: {err}");
    }
}
