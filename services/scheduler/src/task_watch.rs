//! WatchTasks: following the task change log (see `store::task_events`).
//!
//! Each watcher reads the log from its cursor in pages, then looks again
//! every `POLL` while it watches, and at once when a work notification
//! (`wakeups`: a new or finished task) ticks `changes`. The log itself
//! sends no notification: a NOTIFY per task-changing statement would make
//! every claim take PostgreSQL's notification lock at commit, a cost paid
//! whether anyone watches or not. Rows of transactions still running at a
//! read are held back (that is what makes the cursor gap-free), so a woken
//! watcher also looks again shortly after.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::store::{Store, TaskChange, TaskCursor, TaskEventFilter};

/// Changes read per page.
const PAGE: i64 = 500;
/// How soon a woken watcher looks again for changes held back by a
/// transaction that was still running.
const RECHECK: Duration = Duration::from_millis(100);
/// How often a watcher looks without a wake-up.
const POLL: Duration = Duration::from_millis(250);
/// An idle watcher's heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// What a watcher receives.
#[derive(Debug, Clone)]
pub(crate) enum WatchItem {
    Change(TaskChange),
    /// Nothing new: everything up to this cursor was sent.
    Heartbeat(TaskCursor),
}

#[derive(Clone)]
pub(crate) struct TaskWatch {
    pub store: Store,
    /// Ticks whenever the change log may have grown.
    pub changes: watch::Receiver<u64>,
    pub shutdown: CancellationToken,
}

impl TaskWatch {
    /// Streams changes after `after` until the receiver is dropped or the
    /// service shuts down. A read that fails ends the stream with the error
    /// (the client resumes from its last cursor).
    pub(crate) fn watch(
        &self,
        after: TaskCursor,
        filter: TaskEventFilter,
    ) -> mpsc::Receiver<Result<WatchItem>> {
        let (out, items) = mpsc::channel(PAGE as usize);
        let watch = self.clone();
        tokio::spawn(async move { watch.follow(after, filter, out).await });
        items
    }

    async fn follow(
        mut self,
        mut cursor: TaskCursor,
        filter: TaskEventFilter,
        out: mpsc::Sender<Result<WatchItem>>,
    ) {
        // Rechecks left after a wake-up (see the module docs).
        let mut rechecks = 0u32;
        // Time without anything sent, for the heartbeat.
        let mut quiet = Duration::ZERO;
        loop {
            self.changes.borrow_and_update();
            let page = match self.store.task_changes(cursor, &filter, PAGE).await {
                Ok(page) => page,
                Err(err) => {
                    let _ = out.send(Err(err)).await;
                    return;
                }
            };
            let full = page.changes.len() as i64 >= PAGE;
            let sent_any = !page.changes.is_empty();
            for change in page.changes {
                if out.send(Ok(WatchItem::Change(change))).await.is_err() {
                    return;
                }
            }
            cursor = page.next;
            if full {
                continue;
            }
            if sent_any {
                rechecks = 0;
                quiet = Duration::ZERO;
            }
            let wait = if rechecks > 0 { RECHECK } else { POLL };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = out.closed() => return,
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    rechecks = 5;
                }
                _ = tokio::time::sleep(wait) => {
                    rechecks = rechecks.saturating_sub(1);
                    quiet += wait;
                }
            }
            if quiet >= HEARTBEAT {
                quiet = Duration::ZERO;
                if out.send(Ok(WatchItem::Heartbeat(cursor))).await.is_err() {
                    return;
                }
            }
        }
    }
}
