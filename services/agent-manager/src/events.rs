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

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message;
use shepherd_proto::agentmanager::v1::{
    self as pb, AgentEvent, Heartbeat, ResyncRequired, WatchAgentEventsResponse, agent_event,
    watch_agent_events_response,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use shepherd_platform::backoff::Backoff;
use shepherd_platform::batch::{GATHER_YIELDS, recv_gathered};
use shepherd_platform::notify::{Heard, Listener};

use crate::approval::{Answer, Approval, ApprovalState};
use crate::error::{Error, Result};
pub use crate::event::Event;
use crate::store::{Completion, EventRow, Store, TaskOutcome};

/// Events a watcher may lag behind the live feed before it falls back to
/// reading the database.
const LIVE_BUFFER: usize = 4096;
/// Largest group commit.
const MAX_BATCH: usize = 512;
/// Rows per catch-up query.
const PAGE: i64 = 1000;

struct AppendRequest {
    agent_id: Uuid,
    entry: Entry,
    done: oneshot::Sender<Result<Stored>>,
}

/// What a request asks the writer to store.
enum Entry {
    /// An event, as is (boxed, so that an entry stays small).
    Event(Box<AgentEvent>),
    /// A task report: recorded, and if it completed an attempt, logged as
    /// `TaskCompleted` in the same transaction (see
    /// `Store::record_reports_and_append`).
    Report {
        completion: Completion,
        generation: u64,
    },
}

/// What a request stored.
#[derive(Debug, Clone, Copy)]
struct Stored {
    /// The sequence of its event, if it made one.
    seq: Option<u64>,
    /// For a report, the attempt it completed (None: stale).
    completed: Option<u32>,
}

/// One message of a watch stream, as the log encodes it (the wire's).
pub use pb::WatchAgentEventsResponse as WatchItem;

/// Handle to the event log; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    appends: mpsc::Sender<AppendRequest>,
    live: broadcast::Sender<Arc<AgentEvent>>,
    latest: watch::Receiver<u64>,
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
        let (latest_tx, latest) = watch::channel(last_seq);
        let latest_tx = Arc::new(latest_tx);
        let writing = Arc::new(tokio::sync::Mutex::new(()));
        tokio::spawn(write_loop(
            store.clone(),
            requests,
            live.clone(),
            latest_tx.clone(),
            writing.clone(),
        ));
        let listener = Listener::new(database_url, &[NOTIFY_CHANNEL], shutdown);
        tokio::spawn(tail(
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
        let event = new_event(agent_id, generation, encode(event));
        let stored = self
            .request(agent_id, Entry::Event(Box::new(event)))
            .await?;
        stored
            .seq
            .ok_or_else(|| Error::Internal("the event log stored no event".into()))
    }

    /// Appends one event without waiting for its commit (the writer retries
    /// until it is stored). Events queued by one caller keep their order.
    pub async fn enqueue(&self, agent_id: Uuid, generation: u64, event: Event) -> Result<()> {
        let (done, _) = oneshot::channel();
        self.appends
            .send(AppendRequest {
                agent_id,
                entry: Entry::Event(Box::new(new_event(agent_id, generation, encode(event)))),
                done,
            })
            .await
            .map_err(|_| Error::Unavailable("the event log is shutting down".into()))
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

    async fn request(&self, agent_id: Uuid, entry: Entry) -> Result<Stored> {
        let (done, result) = oneshot::channel();
        self.appends
            .send(AppendRequest {
                agent_id,
                entry,
                done,
            })
            .await
            .map_err(|_| Error::Unavailable("the event log is shutting down".into()))?;
        result
            .await
            .map_err(|_| Error::Internal("the event log writer stopped".into()))?
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
        let watcher = Watcher {
            log: self,
            filter,
            out,
            cursor: after,
        };
        tokio::select! {
            result = watcher.run() => match result {
                Ok(()) | Err(WatchEnd::ClientGone) => {}
                Err(WatchEnd::Failed(err)) => tracing::warn!(error = %err, "event watcher failed"),
            },
            _ = stop.cancelled() => {}
        }
    }
}

/// Why a watcher stopped: the client went away, or an error.
enum WatchEnd {
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

struct Watcher<'a> {
    log: &'a EventLog,
    filter: EventFilter,
    out: mpsc::Sender<WatchAgentEventsResponse>,
    /// Every event with a sequence up to here has been sent or skipped.
    cursor: u64,
}

impl Watcher<'_> {
    async fn run(mut self) -> Result<(), WatchEnd> {
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
                    .map_err(|err| Error::Internal(format!("undecodable event {seq}: {err}")))?;
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
                    return Err(WatchEnd::Failed(Error::Unavailable(
                        "the event log is shutting down".into(),
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

/// Longest pause between two tries to store a batch of events.
const MAX_APPEND_BACKOFF: Duration = Duration::from_secs(2);

/// The single writer: group commit, then publish in sequence order.
///
/// Task reports go through here too: a report's state and its
/// `TaskCompleted` event are stored in one transaction (the transactional
/// outbox), so a crash between the two cannot leave a completion that no
/// event tells of.
///
/// A batch that cannot be stored for a passing reason (the database is
/// down) is tried again, with backoff, until it is: an event once accepted
/// is never dropped, and later events wait behind it, so the order holds.
/// (If a commit's answer is lost the batch may be stored twice; every
/// consumer of the log handles events idempotently. Its reports are then
/// stale on the second try and make no second event: the first commit
/// stored theirs, which the tailer publishes.)
///
/// A batch the database refuses for what it holds (an error that trying
/// again cannot fix) is stored one entry at a time instead, so the entry at
/// fault fails on its own and never holds back anyone else's: it is stored
/// in a safe form if it has one, else refused to its sender.
async fn write_loop(
    store: Store,
    mut requests: mpsc::Receiver<AppendRequest>,
    live: broadcast::Sender<Arc<AgentEvent>>,
    latest: Arc<watch::Sender<u64>>,
    writing: Arc<tokio::sync::Mutex<()>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let publisher = Publisher {
        live: &live,
        latest: &latest,
    };
    while recv_gathered(&mut requests, &mut batch, MAX_BATCH, GATHER_YIELDS).await > 0 {
        // Held from before the commit until the batch is published (see
        // `tail`).
        let _writing = writing.lock().await;
        match store_batch(&store, &batch).await {
            Ok(committed) => publisher.publish(batch.drain(..), committed),
            Err(err) => {
                tracing::warn!(error = %err, requests = batch.len(), "the database refused a batch of events; storing its entries one by one");
                for request in batch.drain(..) {
                    store_alone(&store, request, &publisher).await;
                }
            }
        }
    }
}

/// What one commit of the writer stored.
struct Committed {
    /// For each report of the batch, in order, the attempt it completed
    /// (None: stale).
    completed: Vec<Option<u32>>,
    /// The event each report made (None: stale, no event).
    made: Vec<Option<AgentEvent>>,
    /// The sequence of the batch's first event, if it stored any.
    first: Option<u64>,
}

/// Stores `batch` in one transaction, trying again (with backoff) for as
/// long as the failure is a passing one. Fails only when the database
/// refuses what the batch holds.
async fn store_batch(store: &Store, batch: &[AppendRequest]) -> Result<Committed> {
    let reports: Vec<&Completion> = batch
        .iter()
        .filter_map(AppendRequest::report)
        .map(|(completion, _)| completion)
        .collect();
    let mut backoff = Backoff::new(Duration::from_millis(50), MAX_APPEND_BACKOFF);
    loop {
        let mut made = Vec::new();
        let stored = store
            .record_reports_and_append(&reports, |completed| {
                made = events_of_reports(batch, completed);
                rows_of(batch, &made)
            })
            .await;
        match stored {
            Ok((completed, first)) => {
                return Ok(Committed {
                    completed,
                    made,
                    first,
                });
            }
            Err(Error::Db(err)) if !err.is_transient() => return Err(Error::Db(err)),
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, requests = batch.len(), retry_in = ?delay, "storing events failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Stores one entry of a refused batch: as it is, else in its safe form,
/// else not at all (its sender hears why).
async fn store_alone(store: &Store, request: AppendRequest, publisher: &Publisher<'_>) {
    let mut one = vec![request];
    let refused = match store_batch(store, &one).await {
        Ok(committed) => return publisher.publish(one.drain(..), committed),
        Err(err) => err,
    };
    let Some(request) = one.pop() else { return };
    let agent_id = request.agent_id;
    let safe = match request.safe_form() {
        Ok(safe) => safe,
        Err(request) => {
            tracing::error!(agent = %agent_id, error = %refused, "the database refused an event; dropped");
            let _ = request.done.send(Err(refused));
            return;
        }
    };
    tracing::warn!(agent = %agent_id, error = %refused, "the database refused an entry; storing its safe form");
    let mut one = vec![safe];
    match store_batch(store, &one).await {
        Ok(committed) => publisher.publish(one.drain(..), committed),
        Err(err) => {
            tracing::error!(agent = %agent_id, error = %err, "the database refused an entry's safe form too; dropped");
            if let Some(request) = one.pop() {
                let _ = request.done.send(Err(err));
            }
        }
    }
}

/// Puts what the writer committed on the live feed, in sequence order,
/// and answers each request.
struct Publisher<'a> {
    live: &'a broadcast::Sender<Arc<AgentEvent>>,
    latest: &'a watch::Sender<u64>,
}

impl Publisher<'_> {
    fn publish(&self, requests: impl Iterator<Item = AppendRequest>, committed: Committed) {
        let mut completed = committed.completed.into_iter();
        let mut made = committed.made.into_iter();
        let mut next_seq = committed.first.unwrap_or_default();
        for request in requests {
            let (event, completed) = match request.entry {
                Entry::Event(event) => (Some(*event), None),
                Entry::Report { .. } => (made.next().flatten(), completed.next().flatten()),
            };
            let seq = event.map(|mut event| {
                let seq = next_seq;
                next_seq += 1;
                event.sequence = seq;
                // No receivers is fine: nobody is watching right now.
                let _ = self.live.send(Arc::new(event));
                raise(self.latest, seq);
                seq
            });
            let _ = request.done.send(Ok(Stored { seq, completed }));
        }
    }
}

impl AppendRequest {
    /// The request with what the database may have refused taken out, if
    /// there is a form that still says what happened: a report keeps its
    /// task, attempt and outcome, and says its output could not be stored.
    /// An event has no such form (the manager builds its every field):
    /// it comes back as it is.
    fn safe_form(self) -> std::result::Result<Self, Self> {
        match self.entry {
            Entry::Event(_) => Err(self),
            Entry::Report {
                mut completion,
                generation,
            } => {
                completion.output = "[the output could not be stored]".to_owned();
                Ok(Self {
                    entry: Entry::Report {
                        completion,
                        generation,
                    },
                    ..self
                })
            }
        }
    }

    /// The report this request carries, with its session's generation.
    fn report(&self) -> Option<(&Completion, u64)> {
        match &self.entry {
            Entry::Report {
                completion,
                generation,
            } => Some((completion, *generation)),
            Entry::Event(_) => None,
        }
    }
}

/// The `TaskCompleted` event of each of the batch's reports, given the
/// attempt each completed (`completed`, in the order of the reports; None:
/// stale, no event).
fn events_of_reports(
    batch: &[AppendRequest],
    completed: &[Option<u32>],
) -> Vec<Option<AgentEvent>> {
    let reports = batch.iter().filter_map(|request| {
        let (completion, generation) = request.report()?;
        Some((request.agent_id, completion, generation))
    });
    reports
        .zip(completed)
        .map(|((agent_id, completion, generation), attempt)| {
            attempt.map(|attempt| {
                let event = Event::TaskCompleted {
                    task_id: completion.task_id.clone(),
                    outcome: completion.outcome,
                    output: completion.output.clone(),
                    attempt,
                };
                new_event(agent_id, generation, encode(event))
            })
        })
        .collect()
}

/// The rows the batch stores, in request order: each event, and the event
/// each report made (`made`, one per report).
fn rows_of(batch: &[AppendRequest], made: &[Option<AgentEvent>]) -> Vec<EventRow> {
    let mut made = made.iter();
    batch
        .iter()
        .filter_map(|request| {
            let event = match &request.entry {
                Entry::Event(event) => Some(&**event),
                Entry::Report { .. } => made.next().and_then(Option::as_ref),
            }?;
            Some(EventRow {
                agent_id: request.agent_id,
                kind: kind_name(event.kind.as_ref()),
                payload: event.encode_to_vec(),
            })
        })
        .collect()
}

/// The channel appends notify on (payload: the last sequence stored).
const NOTIFY_CHANNEL: &str = "shepherd_agent_events";

/// Moves the high-water mark forward (never back: the writer and the
/// tailer both raise it).
fn raise(latest: &watch::Sender<u64>, seq: u64) {
    latest.send_if_modified(|current| {
        let higher = seq > *current;
        if higher {
            *current = seq;
        }
        higher
    });
}

/// Puts what other managers append on this manager's live feed: on each
/// notification past the high-water mark (and after every (re)connection,
/// when notifications may have been missed) it reads the events after the
/// mark from the database and publishes them.
///
/// This manager's own appends notify too, and the notification arrives
/// about when the writer hears its commit: read at once, the mark would
/// often still lag, and the tailer would read back from the database (and
/// publish twice) events the writer is about to publish. So it waits for
/// the batch the writer is storing to be published before it compares.
async fn tail(
    store: Store,
    mut listener: Listener,
    live: broadcast::Sender<Arc<AgentEvent>>,
    latest: Arc<watch::Sender<u64>>,
    writing: Arc<tokio::sync::Mutex<()>>,
) {
    while let Some(heard) = listener.next().await {
        drop(writing.lock().await);
        let reach = match heard {
            Heard::Notification { payload, .. } => payload.parse::<u64>().ok(),
            Heard::Listening => store.log_state().await.ok().map(|(last, _)| last),
            // What is appended meanwhile is read at the next `Listening`.
            Heard::Deaf => None,
        };
        let Some(reach) = reach else { continue };
        if let Err(err) = publish_through(&store, &live, &latest, reach).await {
            // Watchers still see everything: they read the database when
            // they next catch up.
            tracing::warn!(error = %err, "reading other managers' events failed");
        }
    }
}

async fn publish_through(
    store: &Store,
    live: &broadcast::Sender<Arc<AgentEvent>>,
    latest: &watch::Sender<u64>,
    reach: u64,
) -> Result<()> {
    let mut from = *latest.borrow();
    while from < reach {
        let rows = store.read_events(from, reach, None, &[], PAGE).await?;
        let Some(last) = rows.last().map(|(seq, _)| *seq) else {
            return Ok(());
        };
        for (seq, payload) in rows {
            let mut event = AgentEvent::decode(payload.as_slice())
                .map_err(|err| Error::Internal(format!("undecodable event {seq}: {err}")))?;
            event.sequence = seq;
            let _ = live.send(Arc::new(event));
        }
        raise(latest, last);
        from = last;
    }
    Ok(())
}

fn new_event(agent_id: Uuid, generation: u64, kind: agent_event::Kind) -> AgentEvent {
    AgentEvent {
        sequence: 0,
        agent_id: agent_id.to_string(),
        generation,
        time: Some(SystemTime::now().into()),
        kind: Some(kind),
    }
}

/// An event as the log stores it.
fn encode(event: Event) -> agent_event::Kind {
    use agent_event::Kind;
    match event {
        Event::Created { name } => Kind::Created(pb::AgentCreated { name }),
        Event::Started { pid } => Kind::Started(pb::AgentStarted { pid }),
        Event::Ready => Kind::Ready(pb::AgentReady {}),
        Event::Disconnected { reason } => Kind::Disconnected(pb::AgentDisconnected { reason }),
        Event::Exited {
            code,
            signal,
            reason,
        } => Kind::Exited(pb::AgentExited {
            code,
            signal,
            reason: wire_exit_reason(Some(reason)) as i32,
        }),
        Event::Restarted { generation, reason } => {
            Kind::Restarted(pb::AgentRestarted { generation, reason })
        }
        Event::Stopped => Kind::Stopped(pb::AgentStopped {}),
        Event::Deleted => Kind::Deleted(pb::AgentDeleted {}),
        Event::TaskAccepted { task_id } => Kind::TaskAccepted(pb::TaskAccepted { task_id }),
        Event::TaskCompleted {
            task_id,
            outcome,
            output,
            attempt,
        } => Kind::TaskCompleted(pb::TaskCompleted {
            task_id,
            outcome: wire_outcome(outcome) as i32,
            output,
            attempt,
        }),
        Event::TaskLost {
            task_id,
            reason,
            attempt,
        } => Kind::TaskLost(pb::TaskLost {
            task_id,
            reason,
            attempt,
        }),
        Event::TaskProgress {
            task_id,
            attempt,
            message,
            fraction,
            output,
        } => Kind::TaskProgress(pb::TaskProgress {
            task_id,
            attempt,
            message,
            fraction,
            output,
        }),
        Event::ApprovalRequested(approval) => Kind::ApprovalRequested(pb::ApprovalRequested {
            approval: Some(wire_approval(&approval)),
        }),
        Event::ApprovalDecided(approval) => Kind::ApprovalDecided(pb::ApprovalDecided {
            approval: Some(wire_approval(&approval)),
        }),
    }
}

/// A task outcome as the log (and the API) encode it.
pub fn wire_outcome(outcome: TaskOutcome) -> pb::TaskOutcome {
    match outcome {
        TaskOutcome::Succeeded => pb::TaskOutcome::Succeeded,
        TaskOutcome::Failed => pb::TaskOutcome::Failed,
        TaskOutcome::TimedOut => pb::TaskOutcome::TimedOut,
        TaskOutcome::Cancelled => pb::TaskOutcome::Cancelled,
    }
}

/// The approval an `ApprovalDecided` event carries (its agent and final
/// state), for the couriers that pass decisions to sessions.
pub fn decided_approval(event: &AgentEvent) -> Option<DecidedApproval> {
    let Some(agent_event::Kind::ApprovalDecided(decided)) = &event.kind else {
        return None;
    };
    let approval = decided.approval.as_ref()?;
    Some(DecidedApproval {
        agent_id: approval.agent_id.parse().ok()?,
        answer: Answer {
            request_id: approval.request_id.clone(),
            approval_id: approval.id.clone(),
            state: approval_state_from_wire(approval.state()),
            comment: approval.comment.clone(),
            decided_by: approval.decided_by.clone(),
            digest: approval.digest.clone(),
        },
    })
}

fn approval_state_from_wire(state: pb::ApprovalState) -> ApprovalState {
    match state {
        pb::ApprovalState::Approved => ApprovalState::Approved,
        pb::ApprovalState::Expired => ApprovalState::Expired,
        pb::ApprovalState::Withdrawn => ApprovalState::Withdrawn,
        pb::ApprovalState::Pending => ApprovalState::Pending,
        pb::ApprovalState::Denied | pb::ApprovalState::Unspecified => ApprovalState::Denied,
    }
}

/// An approval state as the log (and the API, and the session) encode it.
pub fn wire_approval_state(state: ApprovalState) -> pb::ApprovalState {
    match state {
        ApprovalState::Pending => pb::ApprovalState::Pending,
        ApprovalState::Approved => pb::ApprovalState::Approved,
        ApprovalState::Denied => pb::ApprovalState::Denied,
        ApprovalState::Expired => pb::ApprovalState::Expired,
        ApprovalState::Withdrawn => pb::ApprovalState::Withdrawn,
    }
}

/// An approval as the log (and the API) encode it.
pub fn wire_approval(approval: &Approval) -> pb::Approval {
    pb::Approval {
        id: approval.id.to_string(),
        agent_id: approval.agent_id.to_string(),
        task_id: approval.task_id.clone(),
        attempt: approval.attempt,
        workflow_id: approval.workflow_id.clone(),
        tool: approval.tool.clone(),
        input: approval.input.clone(),
        reason: approval.reason.clone(),
        state: wire_approval_state(approval.state) as i32,
        comment: approval.comment.clone(),
        decided_by: approval.decided_by.clone(),
        create_time: Some(approval.created_at.into()),
        decide_time: approval.decided_at.map(Into::into),
        expire_time: Some(approval.expires_at.into()),
        request_id: approval.request_id.clone(),
        digest: approval.digest.clone(),
    }
}

/// A decision read back from the log.
pub struct DecidedApproval {
    pub agent_id: Uuid,
    pub answer: Answer,
}

pub use shepherd_proto::event_kinds::{KIND_NAMES, kind_name};

/// An exit reason as the event log (and the API) encode it.
pub fn wire_exit_reason(reason: Option<crate::model::ExitReason>) -> pb::ExitReason {
    use crate::model::ExitReason;
    match reason {
        None => pb::ExitReason::Unspecified,
        Some(ExitReason::Exited) => pb::ExitReason::Exited,
        Some(ExitReason::Killed) => pb::ExitReason::Killed,
        Some(ExitReason::OomKilled) => pb::ExitReason::OomKilled,
        Some(ExitReason::Unknown) => pb::ExitReason::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// `KIND_NAMES` (what watchers may ask for) names every kind once, as
    /// the log stores it.
    #[test]
    fn kind_names_are_the_stored_names_of_every_kind() {
        use agent_event::Kind;
        let kinds = [
            Kind::Created(Default::default()),
            Kind::Started(Default::default()),
            Kind::Ready(Default::default()),
            Kind::Disconnected(Default::default()),
            Kind::Exited(Default::default()),
            Kind::Restarted(Default::default()),
            Kind::Stopped(Default::default()),
            Kind::Deleted(Default::default()),
            Kind::TaskAccepted(Default::default()),
            Kind::TaskCompleted(Default::default()),
            Kind::TaskLost(Default::default()),
            Kind::TaskProgress(Default::default()),
            Kind::ApprovalRequested(Default::default()),
            Kind::ApprovalDecided(Default::default()),
        ];
        let stored: Vec<&str> = kinds.iter().map(|kind| kind_name(Some(kind))).collect();
        assert_eq!(stored, KIND_NAMES);
    }
}
