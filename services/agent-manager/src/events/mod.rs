//! The durable, resumable event log.
//!
//! Writes: one writer task owns appends. It takes every request queued at
//! the moment (group commit), stores them in one transaction with
//! consecutive sequence numbers, and only then publishes them, in order, to
//! live watchers. Because there is one writer and the sequence counter row is
//! locked until commit, sequence order equals commit order: no reader can
//! see seq 11 while 10 is uncommitted.
//!
//! Several managers may share the database: each append notifies
//! (`shepherd_agent_events`, the last sequence, delivered at commit), and
//! every manager's tailer reads what other writers committed and puts it
//! on its own live feed. The feed may then carry events out of order or
//! twice; watchers skip what they sent and go back to the database on a
//! gap, so each still sees the one sequence, gap-free.
//!
//! Reads: a watcher subscribes to the live feed *before* it reads history,
//! then skips what it already sent, so the hand-over has no gap and no
//! duplicate. A watcher that falls behind (its live buffer overflows) goes
//! back to the database, so a slow watcher never blocks the writer or others.
//!
//! The parts: `writer` (the one writer: group commits, reports with their
//! events), `watch` (a watcher's catch-up and live follow), `tailer` (other
//! managers' appends onto this one's live feed), `codec` (events as the log
//! and the wire encode them).

mod codec;
mod tailer;
mod watch;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use shepherd_proto::agentmanager::v1::{self as pb, AgentEvent, WatchAgentEventsResponse};
use tokio::sync::{broadcast, mpsc, oneshot, watch as latest_watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use shepherd_platform::notify::Listener;

use crate::error::{Error, Result};
use crate::model::AgentRecord;
pub use crate::model::event::Event;
use crate::store::{AgentChange, Completion, Store};

pub(crate) use codec::budget_spent;
pub use codec::{
    DecidedApproval, decided_approval, wire_approval, wire_approval_state, wire_exit_reason,
    wire_outcome,
};
pub use shepherd_proto::event_kinds::{KIND_NAMES, kind_name};
pub use watch::EventFilter;
pub use writer::EventsOf;
use writer::{AppendRequest, Change, Entry, Stored};

/// Events a watcher may lag behind the live feed before it falls back to
/// reading the database.
const LIVE_BUFFER: usize = 4096;
/// Rows per catch-up query.
const PAGE: i64 = 1000;

/// One message of a watch stream, as the log encodes it (the wire's).
pub use pb::WatchAgentEventsResponse as WatchItem;

/// Handle to the event log; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    appends: mpsc::Sender<AppendRequest>,
    live: broadcast::Sender<Arc<AgentEvent>>,
    latest: latest_watch::Receiver<u64>,
    store: Store,
    heartbeat_interval: Duration,
}

impl EventLog {
    /// Starts the writer task. It runs until every `EventLog` handle is
    /// dropped, so events appended during shutdown are still stored.
    /// `database_url` is listened on for other managers' appends.
    pub async fn start(
        store: Store,
        heartbeat_interval: Duration,
        database_url: &str,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let (last_seq, _) = store.log_state().await?;
        let (appends, requests) = mpsc::channel(4096);
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let (latest_tx, latest) = latest_watch::channel(last_seq);
        let latest_tx = Arc::new(latest_tx);
        let writing = Arc::new(tokio::sync::Mutex::new(()));
        tokio::spawn(writer::write_loop(
            store.clone(),
            requests,
            live.clone(),
            latest_tx.clone(),
            writing.clone(),
        ));
        let listener = Listener::new(database_url, &[tailer::NOTIFY_CHANNEL], shutdown);
        tokio::spawn(tailer::tail(
            store.clone(),
            listener,
            live.clone(),
            latest_tx,
            writing,
        ));
        Ok(Self {
            appends,
            live,
            latest,
            store,
            heartbeat_interval,
        })
    }

    /// Appends one event and returns its sequence number once it is
    /// committed.
    pub async fn append(&self, agent_id: Uuid, generation: u64, event: Event) -> Result<u64> {
        let event = codec::new_event(agent_id, generation, codec::encode(event));
        let stored = self
            .request(agent_id, Entry::Event(Box::new(event)))
            .await?;
        stored
            .seq
            .ok_or_else(|| Error::internal("the event log stored no event"))
    }

    /// Appends one event without waiting for its commit (the writer retries
    /// until it is stored). Events queued by one caller keep their order.
    pub async fn enqueue(&self, agent_id: Uuid, generation: u64, event: Event) -> Result<()> {
        let (done, _) = oneshot::channel();
        self.appends
            .send(AppendRequest {
                agent_id,
                entry: Entry::Event(Box::new(codec::new_event(
                    agent_id,
                    generation,
                    codec::encode(event),
                ))),
                done,
            })
            .await
            .map_err(|_| Error::unavailable("the event log is shutting down"))
    }

    /// Records a task report and, if it completes the attempt, its
    /// `TaskCompleted` event, in one transaction, in order with the events
    /// queued before it. Returns the attempt it completed; None if the
    /// report is stale (see `Store::record_reports_and_append`).
    pub async fn record_report(
        &self,
        generation: u64,
        completion: Completion,
    ) -> Result<Option<u32>> {
        let agent_id = completion.agent_id;
        let entry = Entry::Report {
            completion,
            generation,
        };
        Ok(self.request(agent_id, entry).await?.completed)
    }

    /// Writes `change` of the agent's row and appends the events `events`
    /// makes of the agent as written, in one transaction, in order with the
    /// events queued before it: both or neither. Returns the agent as
    /// written; NOT_FOUND if the fence refused the change (the agent is gone
    /// or supervised by another node now), and then no event is stored.
    pub async fn change(
        &self,
        agent_id: Uuid,
        change: AgentChange,
        events: EventsOf,
    ) -> Result<AgentRecord> {
        let entry = Entry::Change(Box::new(Change { change, events }));
        let stored = self.request(agent_id, entry).await?;
        stored
            .agent
            .map(|agent| *agent)
            .ok_or_else(|| Error::internal("the event log wrote no agent"))
    }

    async fn request(&self, agent_id: Uuid, entry: Entry) -> Result<Stored> {
        let (done, result) = oneshot::channel();
        self.appends
            .send(AppendRequest {
                agent_id,
                entry,
                done,
            })
            .await
            .map_err(|_| Error::unavailable("the event log is shutting down"))?;
        result
            .await
            .map_err(|_| Error::internal("the event log writer stopped"))?
    }

    /// The highest sequence number published so far.
    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    /// Every event committed from now on (by this node or, once its
    /// tailer reads them, by others), possibly out of order or twice; a
    /// receiver that lags misses some.
    pub fn subscribe_live(&self) -> broadcast::Receiver<Arc<AgentEvent>> {
        self.live.subscribe()
    }

    pub async fn prune(&self, through: u64) -> Result<(u64, u64)> {
        self.store.prune_events(through).await
    }

    /// Streams the events after `after` that `filter` wants into `out`
    /// until the receiver goes away or `stop` is cancelled.
    pub async fn watch(
        &self,
        after: u64,
        filter: EventFilter,
        out: mpsc::Sender<WatchAgentEventsResponse>,
        stop: CancellationToken,
    ) {
        let watcher = watch::Watcher {
            log: self,
            filter,
            out,
            cursor: after,
        };
        tokio::select! {
            result = watcher.run() => match result {
                Ok(()) | Err(watch::WatchEnd::ClientGone) => {}
                Err(watch::WatchEnd::Failed(err)) => tracing::warn!(error = %err, "event watcher failed"),
            },
            _ = stop.cancelled() => {}
        }
    }
}
