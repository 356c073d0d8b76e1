//! Other managers' appends onto this manager's live feed.

use std::sync::Arc;

use prost::Message;
use shepherd_proto::agentmanager::v1::AgentEvent;
use tokio::sync::{broadcast, watch};

use shepherd_platform::notify::{Heard, Listener};

use super::PAGE;
use crate::error::{Error, Result};
use crate::store::Store;

/// The channel appends notify on (payload: the last sequence stored).
pub(super) const NOTIFY_CHANNEL: &str = "shepherd_agent_events";

/// Moves the high-water mark forward (never back: the writer and the
/// tailer both raise it).
pub(super) fn raise(latest: &watch::Sender<u64>, seq: u64) {
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
pub(super) async fn tail(
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
                .map_err(|err| Error::internal(format!("undecodable event {seq}: {err}")))?;
            event.sequence = seq;
            let _ = live.send(Arc::new(event));
        }
        raise(latest, last);
        from = last;
    }
    Ok(())
}
