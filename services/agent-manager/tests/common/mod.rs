//! Harness for the agent-manager's integration tests: a fresh database, the
//! real `agent-manager` binary on loopback, the real reference agent.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)] // each test file uses a different part of the harness

use std::time::Duration;

use anyhow::{Context, bail};
use shepherd_proto::agentmanager::v1::{
    self as pb, agent_manager_client::AgentManagerClient, watch_agent_events_response,
};
use shepherd_testkit::{ServiceProcess, TestDb, bin_path};
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

/// An agent running the reference agent, with a fast restart policy.
pub(crate) fn reference_agent(name: &str, mode: pb::RestartMode) -> pb::Agent {
    pb::Agent {
        name: name.to_owned(),
        command: bin_path("shepherd-agent")
            .expect("reference agent binary")
            .display()
            .to_string(),
        restart_policy: Some(pb::RestartPolicy {
            mode: mode as i32,
            max_restarts: 10,
            window: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            initial_backoff: Some(prost_types::Duration {
                seconds: 0,
                nanos: 50_000_000,
            }),
            max_backoff: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
        }),
        ..Default::default()
    }
}

/// A WatchAgentEvents stream with waiting helpers.
pub(crate) struct Events {
    pub stream: tonic::Streaming<pb::WatchAgentEventsResponse>,
}

impl Events {
    /// Next message of any kind (events, heartbeats, resync).
    pub(crate) async fn next_message(
        &mut self,
    ) -> anyhow::Result<watch_agent_events_response::Kind> {
        let message = tokio::time::timeout(WAIT, self.stream.message())
            .await
            .context("no message on the event stream within the deadline")??
            .context("event stream ended")?;
        message.kind.context("empty message")
    }

    /// Next event, skipping heartbeats.
    pub(crate) async fn next(&mut self) -> anyhow::Result<pb::AgentEvent> {
        loop {
            match self.next_message().await? {
                watch_agent_events_response::Kind::Event(event) => return Ok(event),
                watch_agent_events_response::Kind::Heartbeat(_) => continue,
                other => bail!("unexpected message {other:?}"),
            }
        }
    }

    /// Events up to and including the first that matches `until`.
    pub(crate) async fn until(
        &mut self,
        until: impl Fn(&pb::AgentEvent) -> bool,
    ) -> anyhow::Result<Vec<pb::AgentEvent>> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await?;
            let done = until(&event);
            seen.push(event);
            if done {
                return Ok(seen);
            }
        }
    }

    /// Every event until the stream goes idle (a heartbeat arrives).
    pub(crate) async fn until_idle(&mut self) -> anyhow::Result<Vec<pb::AgentEvent>> {
        let mut seen = Vec::new();
        loop {
            match self.next_message().await? {
                watch_agent_events_response::Kind::Event(event) => seen.push(event),
                watch_agent_events_response::Kind::Heartbeat(_) => return Ok(seen),
                other => bail!("unexpected message {other:?}"),
            }
        }
    }
}

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
    use nix::sys::signal::{Signal, kill};
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
}
