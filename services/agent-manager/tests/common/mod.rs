//! Helpers of the agent-manager's integration tests; the harness itself (a
//! fresh database, the real `agent-manager` binary on loopback) lives in
//! `shepherd_testkit::manager`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)] // each test file uses a different part of the harness

use std::time::Duration;

use shepherd_proto::agentmanager::v1 as pb;

#[allow(unused_imports)] // each test file uses a different part
pub(crate) use shepherd_testkit::manager::{ManagerHarness as Harness, start_manager};

pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// An agent running the reference agent, with a fast restart policy
/// (10 restarts a minute, so a crash loop ends FAILED soon).
pub(crate) fn reference_agent(name: &str, mode: pb::RestartMode) -> pb::Agent {
    shepherd_testkit::agents::reference_agent(name, mode, 10)
        .unwrap_or_else(|err| panic!("the reference agent: {err}"))
}

#[allow(unused_imports)]
pub(crate) use shepherd_testkit::agents::Events;

/// A manager with one reference agent, READY, and a watch of every event
/// from the start (already past the agent's readiness).
pub(crate) async fn ready_agent(
    name: &str,
    mode: pb::RestartMode,
) -> anyhow::Result<(Harness, Events, pb::Agent)> {
    let mut h = Harness::start().await?;
    let mut events = h.watch(0, "").await?;
    let agent = h.create(reference_agent(name, mode)).await?;
    events.until(is_ready).await?;
    Ok((h, events, agent))
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
    if let Err(err) = shepherd_testkit::agents::kill9(pid) {
        panic!("kill -9 {pid}: {err}");
    }
}
