//! A watcher of the log: subscribes to the live feed before it reads
//! history, then skips what it already sent, so the hand-over has no gap and
//! no duplicate; falls back to the database when the live feed lags.

use std::sync::Arc;

use prost::Message;
use shepherd_proto::agentmanager::v1::{
    AgentEvent, Heartbeat, ResyncRequired, WatchAgentEventsResponse, watch_agent_events_response,
};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use super::{EventLog, PAGE, kind_name};
use crate::error::Error;

/// Why a watcher stopped: the client went away, or an error.
pub(super) enum WatchEnd {
    ClientGone,
    Failed(Error),
}

impl std::fmt::Display for WatchEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientGone => f.write_str("client went away"),
            Self::Failed(err) => err.fmt(f),
        }
    }
}

impl From<Error> for WatchEnd {
    fn from(err: Error) -> Self {
        Self::Failed(err)
    }
}

/// The events a watcher wants.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// One agent's, or every agent's.
    pub agent: Option<Uuid>,
    /// Of these kinds (`KIND_NAMES`), or of every kind when empty.
    pub kinds: Vec<&'static str>,
}

impl EventFilter {
    /// Runs for every event and watcher: compares the agent in its stored
    /// form without allocating one per event.
    fn wants(&self, event: &AgentEvent) -> bool {
        let mut id = Uuid::encode_buffer();
        self.agent
            .is_none_or(|agent| event.agent_id == *agent.hyphenated().encode_lower(&mut id))
            && (self.kinds.is_empty() || self.kinds.contains(&kind_name(event.kind.as_ref())))
    }
}

pub(super) struct Watcher<'a> {
    pub(super) log: &'a EventLog,
    pub(super) filter: EventFilter,
    pub(super) out: mpsc::Sender<WatchAgentEventsResponse>,
    /// Every event with a sequence up to here has been sent or skipped.
    pub(super) cursor: u64,
}

impl Watcher<'_> {
    pub(super) async fn run(mut self) -> Result<(), WatchEnd> {
        // Subscribe before reading history: anything committed after the
        // read below is then guaranteed to be in the live feed.
        let mut live = self.log.live.subscribe();
        let (_, pruned_through) = self.log.store.log_state().await?;
        if self.cursor < pruned_through {
            let message = format!(
                "events up to {pruned_through} were pruned; rebuild state from current data and continue from here"
            );
            self.send(watch_agent_events_response::Kind::ResyncRequired(
                ResyncRequired {
                    requested_after_sequence: self.cursor,
                    pruned_through_sequence: pruned_through,
                    message,
                },
            ))
            .await?;
            self.cursor = pruned_through;
        }
        loop {
            self.catch_up().await?;
            self.follow(&mut live).await?;
            // `follow` returns when the live feed can no longer be trusted to
            // be contiguous (lag): go back to the database.
        }
    }

    /// Sends every committed event after the cursor from the database.
    async fn catch_up(&mut self) -> Result<(), WatchEnd> {
        loop {
            // Everything up to the committed high-water mark is readable.
            let (through, _) = self.log.store.log_state().await?;
            if through <= self.cursor {
                return Ok(());
            }
            let rows = self
                .log
                .store
                .read_events(
                    self.cursor,
                    through,
                    self.filter.agent,
                    &self.filter.kinds,
                    PAGE,
                )
                .await?;
            let full_page = rows.len() as i64 == PAGE;
            for (seq, payload) in rows {
                let mut event = AgentEvent::decode(payload.as_slice())
                    .map_err(|err| Error::internal(format!("undecodable event {seq}: {err}")))?;
                event.sequence = seq;
                self.send(watch_agent_events_response::Kind::Event(event))
                    .await?;
                self.cursor = seq;
            }
            if !full_page {
                // A filtered read skips the events not wanted: they are
                // covered up to `through` as well.
                self.cursor = self.cursor.max(through);
            }
        }
    }

    /// Forwards live events while they arrive contiguously; heartbeats when
    /// idle. Returns Ok when the watcher must catch up from the database.
    async fn follow(
        &mut self,
        live: &mut broadcast::Receiver<Arc<AgentEvent>>,
    ) -> Result<(), WatchEnd> {
        let interval = self.log.heartbeat_interval;
        // Idle means nothing *sent* for an interval: a filtered watcher on a
        // busy log still gets heartbeats.
        let mut heartbeat_at = tokio::time::Instant::now() + interval;
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                _ = tokio::time::sleep_until(heartbeat_at) => {
                    let latest = self.log.latest();
                    self.send(watch_agent_events_response::Kind::Heartbeat(Heartbeat {
                        latest_sequence: latest,
                    }))
                    .await?;
                    heartbeat_at = tokio::time::Instant::now() + interval;
                    continue;
                }
                _ = self.out.closed() => return Err(WatchEnd::ClientGone),
            };
            match received {
                Ok(event) if event.sequence <= self.cursor => {}
                Ok(event) if event.sequence == self.cursor + 1 => {
                    self.cursor = event.sequence;
                    if self.filter.wants(&event) {
                        self.send(watch_agent_events_response::Kind::Event((*event).clone()))
                            .await?;
                        heartbeat_at = tokio::time::Instant::now() + interval;
                    }
                }
                // A gap (should not happen with one writer) or lag: the
                // database has everything.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(WatchEnd::Failed(Error::unavailable(
                        "the event log is shutting down",
                    )));
                }
            }
        }
    }

    async fn send(&self, kind: watch_agent_events_response::Kind) -> Result<(), WatchEnd> {
        self.out
            .send(WatchAgentEventsResponse { kind: Some(kind) })
            .await
            .map_err(|_| WatchEnd::ClientGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shepherd_proto::agentmanager::v1::agent_event;

    /// A watcher of one agent gets that agent's events and no other's,
    /// and only the kinds it names.
    #[test]
    fn a_filter_matches_the_agent_as_events_carry_it() {
        let (ours, other) = (Uuid::now_v7(), Uuid::now_v7());
        let event = |agent: Uuid, kind: agent_event::Kind| AgentEvent {
            agent_id: agent.to_string(),
            kind: Some(kind),
            ..Default::default()
        };
        let ready = || agent_event::Kind::Ready(Default::default());
        let stopped = || agent_event::Kind::Stopped(Default::default());
        let filter = EventFilter {
            agent: Some(ours),
            kinds: vec!["ready"],
        };
        assert!(filter.wants(&event(ours, ready())));
        assert!(!filter.wants(&event(other, ready())));
        assert!(!filter.wants(&event(ours, stopped())));
        let everything = EventFilter {
            agent: None,
            kinds: Vec::new(),
        };
        assert!(everything.wants(&event(other, stopped())));
    }
}
