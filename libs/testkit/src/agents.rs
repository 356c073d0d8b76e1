//! Agent-side helpers every test harness shares: fast restart policies,
//! the reference agent as an agent spec, a crash on demand, and a
//! WatchAgentEvents stream with waiting helpers.

use std::time::Duration;

use anyhow::{Context, bail};
use shepherd_proto::agentmanager::v1::{self as pb, watch_agent_events_response};

/// How long the event helpers wait for the next message.
pub const EVENT_WAIT: Duration = Duration::from_secs(20);

/// A restart policy for tests: restarts after 50 ms (doubling up to 1 s),
/// `max_restarts` within a minute.
pub fn restart_policy(mode: pb::RestartMode, max_restarts: u32) -> pb::RestartPolicy {
    let duration = |seconds: i64, millis: i32| {
        Some(prost_types::Duration {
            seconds,
            nanos: millis * 1_000_000,
        })
    };
    pb::RestartPolicy {
        mode: mode as i32,
        max_restarts,
        window: duration(60, 0),
        initial_backoff: duration(0, 50),
        max_backoff: duration(1, 0),
    }
}

/// An agent running the reference agent (`shepherd-agent`).
pub fn reference_agent(
    name: &str,
    mode: pb::RestartMode,
    max_restarts: u32,
) -> anyhow::Result<pb::Agent> {
    Ok(pb::Agent {
        name: name.to_owned(),
        command: crate::bin_path("shepherd-agent")?.display().to_string(),
        restart_policy: Some(restart_policy(mode, max_restarts)),
        ..Default::default()
    })
}

/// SIGKILL a process, as a crash would.
pub fn kill9(pid: i32) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL)?;
    Ok(())
}

/// A WatchAgentEvents stream with waiting helpers.
pub struct Events {
    pub stream: tonic::Streaming<pb::WatchAgentEventsResponse>,
}

impl Events {
    /// Next message of any kind (events, heartbeats, resync).
    pub async fn next_message(&mut self) -> anyhow::Result<watch_agent_events_response::Kind> {
        let message = tokio::time::timeout(EVENT_WAIT, self.stream.message())
            .await
            .context("no message on the event stream within the deadline")??
            .context("event stream ended")?;
        message.kind.context("empty message")
    }

    /// Next event, skipping heartbeats.
    pub async fn next(&mut self) -> anyhow::Result<pb::AgentEvent> {
        loop {
            match self.next_message().await? {
                watch_agent_events_response::Kind::Event(event) => return Ok(event),
                watch_agent_events_response::Kind::Heartbeat(_) => continue,
                other => bail!("unexpected message {other:?}"),
            }
        }
    }

    /// Events up to and including the first that matches `until`.
    pub async fn until(
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
    pub async fn until_idle(&mut self) -> anyhow::Result<Vec<pb::AgentEvent>> {
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
