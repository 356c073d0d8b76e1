//! Consumes the agent-manager's event stream (recovery mechanism 2,
//! "resume") and schedules the level passes (mechanism 3) and the settling
//! of tasks in flight (see `settle`).
//!
//! The last handled sequence is persisted; after a restart or a broken
//! stream the consumer resumes from it, reconnecting with capped
//! exponential backoff and jitter. The stream must prove it is alive: no
//! message (not even a heartbeat) within `stream_timeout` means it is
//! stalled, and the consumer reconnects. `ResyncRequired` means events were
//! missed for good, so in-flight tasks are settled and a full level pass
//! runs. Every (re)connect and every `reconcile_interval` runs a level pass
//! and settles the tasks in flight; they run on this one task, in order
//! with the events.
//!
//! Task events of a workflow whose lease another replica holds (this
//! replica's runner of it stands by) are left to that replica: only the
//! holder records them and wakes its runner, so a standby costs the active
//! replica nothing. Anything the holder misses (it died before recording)
//! is settled by whoever takes the lease over.
//!
//! Handling is idempotent, so re-handling events after a crash (the cursor
//! is saved in batches) is harmless.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use shepherd_platform::backoff::Backoff;

use crate::error::Result;
use crate::manager_client::{AgentEvent, EventStream, Heard, ManagerClient};
use crate::recovery::Recovery;
use crate::store::{Outcome, Store};
use tracing::Instrument;

/// How often a dirty cursor is saved.
const SAVE_EVERY: Duration = Duration::from_millis(200);
/// Most messages handled in one go.
const MAX_BATCH: usize = 1024;
/// Most messages read ahead of the handler.
const READ_AHEAD: usize = 4 * MAX_BATCH;
/// The periodic settle pass leaves tasks dispatched less than this long ago
/// alone: their dispatch is most likely still on its way.
const SETTLE_MIN_AGE: Duration = Duration::from_secs(2);

pub(crate) struct Consumer {
    /// Where the cursor is kept.
    pub store: Store,
    /// Whose event stream this is.
    pub manager: ManagerClient,
    /// The one place that acts on what the stream says.
    pub recovery: Arc<Recovery>,
    pub reconcile_interval: Duration,
    pub stream_timeout: Duration,
    /// Level passes at connect and on the interval (off only in tests).
    pub level_enabled: bool,
}

/// Why a connected stream ended.
enum StreamEnd {
    Shutdown,
    Broken(String),
}

impl Consumer {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.connect_and_consume(&shutdown, &mut backoff).await {
                StreamEnd::Shutdown => return,
                StreamEnd::Broken(reason) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%reason, retry_in = ?delay, "agent event stream lost; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn connect_and_consume(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> StreamEnd {
        let store = &self.store;
        let mut cursor = match store.load_cursor().await {
            Ok(cursor) => cursor,
            Err(err) => return StreamEnd::Broken(format!("loading the event cursor: {err}")),
        };
        // The subscription is its own trace: the manager's side of the
        // stream joins it through the propagated context.
        let span = tracing::info_span!(
            "watch_agent_events",
            after = cursor,
            trace_id = tracing::field::Empty
        );
        shepherd_platform::telemetry::propagation::record_trace_id(&span);
        let stream = match self.manager.watch(cursor).instrument(span).await {
            Ok(stream) => stream,
            Err(status) => return StreamEnd::Broken(format!("connecting: {}", status.message())),
        };
        let reader = CancellationToken::new();
        let _stop_reader = reader.clone().drop_guard();
        let mut inbox = spawn_reader(stream, self.stream_timeout, reader);
        tracing::info!(after = cursor, "watching agent events");
        // Level pass on every (re)connect: whatever was missed while
        // disconnected is fixed now, events or not. Then every task in
        // flight is settled: a crash (ours or another replica's) or a
        // missed event may have left some that nobody else will.
        if self.level_enabled
            && let Err(err) = self.recovery.level_pass().await
        {
            tracing::warn!(error = %err, "level pass after connect failed");
        }
        self.recovery.settle(Duration::ZERO, None).await;

        let mut reconcile = tokio::time::interval_at(
            Instant::now() + self.reconcile_interval,
            self.reconcile_interval,
        );
        let mut saved = cursor;
        let mut save_at = Instant::now() + SAVE_EVERY;
        let end = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break StreamEnd::Shutdown,
                _ = reconcile.tick() => {
                    if self.level_enabled
                        && let Err(err) = self.recovery.level_pass().await
                    {
                        tracing::warn!(error = %err, "periodic level pass failed");
                    }
                    self.recovery.settle(SETTLE_MIN_AGE, None).await;
                    if let Err(err) = self.recovery.update_stalls().await {
                        tracing::warn!(error = %err, "checking for stalled runners failed");
                    }
                }
                // At most one save per SAVE_EVERY: the first progress after
                // a quiet spell is saved at once, the rest of a busy stream
                // every SAVE_EVERY (a restart replays at most that much,
                // and handling is idempotent).
                _ = tokio::time::sleep_until(save_at), if saved != cursor => {
                    if let Err(err) = store.save_cursor(cursor).await {
                        break StreamEnd::Broken(format!("saving the event cursor: {err}"));
                    }
                    saved = cursor;
                    save_at = Instant::now() + SAVE_EVERY;
                }
                received = inbox.recv() => {
                    let first = match received {
                        Some(Ok(message)) => message,
                        Some(Err(reason)) => break StreamEnd::Broken(reason),
                        None => break StreamEnd::Broken("stream reader stopped".into()),
                    };
                    backoff.reset();
                    // Everything that arrived meanwhile is handled together:
                    // one outcome update for all the completions in it.
                    let mut batch = vec![first];
                    let mut broken = None;
                    while batch.len() < MAX_BATCH {
                        match inbox.try_recv() {
                            Ok(Ok(message)) => batch.push(message),
                            Ok(Err(reason)) => {
                                broken = Some(reason);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if let Err(err) = self.handle_batch(batch, &mut cursor).await {
                        break StreamEnd::Broken(format!("handling an event: {err}"));
                    }
                    if let Some(reason) = broken {
                        break StreamEnd::Broken(reason);
                    }
                }
            }
        };
        if saved != cursor
            && let Err(err) = store.save_cursor(cursor).await
        {
            tracing::warn!(error = %err, "could not save the event cursor");
        }
        end
    }

    /// Handles a batch in order, except that completions are gathered and
    /// recorded together: only a message whose handling depends on earlier
    /// outcomes (see `needs_outcomes_first`) makes them be recorded first.
    /// The cursor passes a completion only once its outcome is stored.
    async fn handle_batch(&self, batch: Vec<Heard>, cursor: &mut u64) -> Result<()> {
        let mut completions: Vec<Outcome> = Vec::new();
        let mut handled = *cursor;
        for message in batch {
            if let Heard::Event {
                sequence,
                event:
                    AgentEvent::TaskCompleted {
                        task_id,
                        attempt,
                        end,
                        output,
                    },
                ..
            } = message
            {
                handled = handled.max(sequence);
                if !self.recovery.held_elsewhere(&task_id) {
                    completions.push(Outcome {
                        task_id,
                        attempt,
                        end,
                        output,
                    });
                }
                continue;
            }
            if needs_outcomes_first(&message) {
                self.recovery.record_outcomes(&mut completions).await?;
                *cursor = handled;
            }
            self.handle(message, &mut handled).await?;
            if completions.is_empty() {
                *cursor = handled;
            }
        }
        self.recovery.record_outcomes(&mut completions).await?;
        *cursor = handled;
        Ok(())
    }

    async fn handle(&self, message: Heard, cursor: &mut u64) -> Result<()> {
        match message {
            Heard::Event {
                sequence,
                agent,
                event,
            } => {
                if let Some(agent) = agent {
                    self.recovery.on_event(agent, event).await?;
                }
                *cursor = sequence;
            }
            Heard::Resync {
                requested_after,
                pruned_through,
            } => {
                tracing::warn!(
                    requested = requested_after,
                    pruned_through,
                    "events were missed for good; resynchronising"
                );
                self.recovery.resync().await?;
                *cursor = pruned_through;
            }
            Heard::Heartbeat { latest } => {
                crate::metrics::stream_lag(latest.saturating_sub(*cursor));
            }
            Heard::Nothing => {}
        }
        Ok(())
    }
}

/// Whether handling `message` may depend on the outcomes received before
/// it: anything that changes tasks or starts runners. Acceptances,
/// readiness losses and heartbeats do not, so completions around them are
/// still recorded in one statement.
fn needs_outcomes_first(message: &Heard) -> bool {
    match message {
        Heard::Event { event, .. } => matches!(
            event,
            AgentEvent::TaskLost { .. }
                | AgentEvent::Deleted
                | AgentEvent::Ready
                | AgentEvent::Restarted { .. }
        ),
        Heard::Resync { .. } => true,
        Heard::Heartbeat { .. } | Heard::Nothing => false,
    }
}

/// What the stream reader passes on: a message, or why the stream ended.
type Received = std::result::Result<Heard, String>;

/// Reads the stream on a task of its own, so that messages keep arriving
/// (and HTTP/2 flow control keeps the manager sending) while a batch is
/// being handled; the handler then takes the whole backlog in one go.
/// The reader also watches for a stalled stream: no message, not even a
/// heartbeat, within `timeout`.
fn spawn_reader(
    mut stream: EventStream,
    timeout: Duration,
    stop: CancellationToken,
) -> mpsc::Receiver<Received> {
    let (inbox, received) = mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = tokio::time::timeout(timeout, stream.next()) => next,
            };
            let item = match next {
                Ok(Ok(Some(message))) => Ok(message),
                Ok(Ok(None)) => Err("stream ended".to_owned()),
                Ok(Err(reason)) => Err(reason),
                Err(_) => Err(format!("no heartbeat for {timeout:?}")),
            };
            let ended = item.is_err();
            if inbox.send(item).await.is_err() || ended {
                return;
            }
        }
    });
    received
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskEnd;
    use uuid::Uuid;

    fn event(event: AgentEvent) -> Heard {
        Heard::Event {
            sequence: 1,
            agent: Some(Uuid::nil()),
            event,
        }
    }

    #[test]
    fn only_what_changes_tasks_or_starts_runners_waits_for_earlier_outcomes() {
        // These act on tasks or runners: the outcomes before them must be
        // stored first, or a runner could start beside a task that already
        // finished.
        for first in [
            event(AgentEvent::Ready),
            event(AgentEvent::Deleted),
            event(AgentEvent::Restarted {
                generation: 2,
                reason: "crash".into(),
            }),
            event(AgentEvent::TaskLost {
                task_id: "t".into(),
                attempt: Some(1),
                reason: "gone".into(),
            }),
            Heard::Resync {
                requested_after: 1,
                pruned_through: 9,
            },
        ] {
            assert!(needs_outcomes_first(&first), "{first:?}");
        }
        // These do not: completions around them still share one statement.
        for batched in [
            event(AgentEvent::NotReady),
            event(AgentEvent::Other),
            event(AgentEvent::TaskCompleted {
                task_id: "t".into(),
                attempt: Some(1),
                end: TaskEnd::Succeeded,
                output: String::new(),
            }),
            Heard::Heartbeat { latest: 3 },
            Heard::Nothing,
        ] {
            assert!(!needs_outcomes_first(&batched), "{batched:?}");
        }
    }
}
