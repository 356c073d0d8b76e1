//! The single writer of the log: group commit, then publish in sequence
//! order (see `write_loop`).

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use shepherd_proto::agentmanager::v1::AgentEvent;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use uuid::Uuid;

use shepherd_platform::backoff::Backoff;
use shepherd_platform::batch::{GATHER_YIELDS, recv_gathered};

use super::codec::{encode, new_event};
use super::tailer::raise;
use super::{Event, kind_name};
use crate::error::{Error, Result};
use crate::model::AgentRecord;
use crate::store::{AgentChange, Completion, EventRow, LogBatch, Store, moved};
use shepherd_platform::error::Error as Shared;

/// Largest group commit.
const MAX_BATCH: usize = 512;

pub(super) struct AppendRequest {
    pub(super) agent_id: Uuid,
    pub(super) entry: Entry,
    pub(super) done: oneshot::Sender<Result<Stored>>,
}

/// What a request asks the writer to store.
pub(super) enum Entry {
    /// An event, as is (boxed, so that an entry stays small).
    Event(Box<AgentEvent>),
    /// A task report: recorded, and if it completed an attempt, logged as
    /// `TaskCompleted` in the same transaction (see
    /// `Store::record_reports_and_append`).
    Report {
        completion: Completion,
        generation: u64,
    },
    /// A write of the agent's row and the events that tell of it, in one
    /// transaction: both or neither. A change the fence refuses (the agent
    /// is gone or another node's) makes no event and fails on its own.
    Change(Box<Change>),
}

/// See `Entry::Change`.
pub(super) struct Change {
    pub(super) change: AgentChange,
    /// The events, given the agent as written (its generation is theirs:
    /// a launch or a new instance counts the next one).
    pub(super) events: EventsOf,
}

/// The events that tell of an agent change, given the agent as written.
pub type EventsOf = Box<dyn Fn(&AgentRecord) -> Vec<Event> + Send + Sync>;

/// What a request stored.
#[derive(Debug, Default)]
pub(super) struct Stored {
    /// The sequence of its (last) event, if it made one.
    pub(super) seq: Option<u64>,
    /// For a report, the attempt it completed (None: stale).
    pub(super) completed: Option<u32>,
    /// For a change, the agent as written.
    pub(super) agent: Option<Box<AgentRecord>>,
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
pub(super) async fn write_loop(
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
    /// For each request, in order, the events it made.
    made: Vec<Vec<AgentEvent>>,
    /// For each report of the batch, in order, the attempt it completed
    /// (None: stale).
    completed: Vec<Option<u32>>,
    /// For each change of the batch, in order, the agent as written (None:
    /// the fence refused it).
    changed: Vec<Option<AgentRecord>>,
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
    let changes: Vec<(Uuid, &AgentChange)> = batch
        .iter()
        .filter_map(|request| match &request.entry {
            Entry::Change(change) => Some((request.agent_id, &change.change)),
            _ => None,
        })
        .collect();
    let mut backoff = Backoff::new(Duration::from_millis(50), MAX_APPEND_BACKOFF);
    loop {
        let mut made = Vec::new();
        let stored = store
            .commit_log_batch(&reports, &changes, |completed, changed| {
                made = events_made(batch, completed, changed);
                rows_of(batch, &made)
            })
            .await;
        match stored {
            Ok(LogBatch {
                completed,
                changed,
                first,
            }) => {
                return Ok(Committed {
                    made,
                    completed,
                    changed,
                    first,
                });
            }
            Err(Error::Common(Shared::Db(err))) if !err.is_transient() => return Err(err.into()),
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
        let mut changed = committed.changed.into_iter();
        let mut next_seq = committed.first.unwrap_or_default();
        for (mut request, mut made) in requests.zip(committed.made) {
            if let Entry::Event(event) = &mut request.entry {
                made.push(std::mem::take(&mut **event));
            }
            let mut seq = None;
            for mut event in made {
                event.sequence = next_seq;
                seq = Some(next_seq);
                next_seq += 1;
                // No receivers is fine: nobody is watching right now.
                let _ = self.live.send(Arc::new(event));
                raise(self.latest, next_seq - 1);
            }
            let answer = match request.entry {
                Entry::Event(_) => Ok(Stored {
                    seq,
                    ..Stored::default()
                }),
                Entry::Report { .. } => Ok(Stored {
                    seq,
                    completed: completed.next().flatten(),
                    ..Stored::default()
                }),
                Entry::Change(_) => match changed.next().flatten() {
                    Some(agent) => Ok(Stored {
                        seq,
                        agent: Some(Box::new(agent)),
                        ..Stored::default()
                    }),
                    None => Err(moved(request.agent_id)),
                },
            };
            let _ = request.done.send(answer);
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
            Entry::Event(_) | Entry::Change(_) => Err(self),
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
            Entry::Event(_) | Entry::Change(_) => None,
        }
    }
}

/// The events each request of the batch makes, in request order, given
/// the attempt each report completed (`completed`, in the order of the
/// reports; None: stale, no event) and what each change wrote (`changed`,
/// in the order of the changes; None: refused, no event).
fn events_made(
    batch: &[AppendRequest],
    completed: &[Option<u32>],
    changed: &[Option<AgentRecord>],
) -> Vec<Vec<AgentEvent>> {
    let mut completed = completed.iter();
    let mut changed = changed.iter();
    batch
        .iter()
        .map(|request| match &request.entry {
            // Stored and published from the request itself (not copied).
            Entry::Event(_) => Vec::new(),
            Entry::Report {
                completion,
                generation,
            } => match completed.next().copied().flatten() {
                Some(attempt) => {
                    let event = Event::TaskCompleted {
                        task_id: completion.task_id.clone(),
                        outcome: completion.outcome,
                        output: completion.output.clone(),
                        attempt,
                    };
                    vec![new_event(request.agent_id, *generation, encode(event))]
                }
                None => Vec::new(),
            },
            Entry::Change(change) => match changed.next() {
                Some(Some(agent)) => (change.events)(agent)
                    .into_iter()
                    .map(|event| new_event(request.agent_id, agent.generation, encode(event)))
                    .collect(),
                _ => Vec::new(),
            },
        })
        .collect()
}

/// The rows the batch stores, in request order: each plain event, and the
/// events the other requests made (`made`).
fn rows_of(batch: &[AppendRequest], made: &[Vec<AgentEvent>]) -> Vec<EventRow> {
    batch
        .iter()
        .zip(made)
        .flat_map(|(request, made)| {
            let events: &[AgentEvent] = match &request.entry {
                Entry::Event(event) => std::slice::from_ref(&**event),
                _ => made,
            };
            events.iter().map(|event| EventRow {
                agent_id: request.agent_id,
                kind: kind_name(event.kind.as_ref()),
                payload: event.encode_to_vec(),
            })
        })
        .collect()
}
