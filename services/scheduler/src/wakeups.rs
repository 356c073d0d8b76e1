//! Wake-ups: runners sleep until something can change what they may claim.
//!
//! Three sources, so that no wake-up is ever needed twice and none is lost:
//! * **Notifications.** The database's triggers (migration 0010) NOTIFY
//!   `shepherd_work` with a workflow's id when a task of it becomes
//!   claimable or a slot frees up, from whichever replica wrote it. One
//!   connection per replica listens; each notification wakes that
//!   workflow's runner here, if it runs here.
//! * **Due timers.** A delayed task (a `delay` trigger, a retry with a
//!   delay) NOTIFYs `shepherd_due` with the time it becomes claimable; one
//!   timer per replica fires then and wakes the workflows with due work.
//! * **Released leases.** A lease given up (hand-over, shutdown) NOTIFYs
//!   `shepherd_lease`, which wakes the other replicas' standing-by runners
//!   of that workflow.
//! * **Direct wake-ups.** A change made through this replica (a trigger,
//!   an API call) wakes the runner directly as well; an outcome its
//!   consumer records does so only while the listener is not connected
//!   (`Runners::wake_unless_notified`): otherwise its notification does.
//! * **A safety poll.** Notifications are lost while the listening
//!   connection is down. Every (re)connection, and every `safety_interval`
//!   besides, one query finds the workflows of this replica's runners that
//!   have claimable work and wakes them. It is one query for all runners,
//!   at a long interval: idle runners cost nothing.

use shepherd_platform::timer::sleep_until_some;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shepherd_platform::notify::{Heard, Listener};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::runner::Runners;
use crate::store::Store;

/// Channel of "a workflow has claimable work or room".
pub(crate) const WORK_CHANNEL: &str = "shepherd_work";
/// Channel of "a delayed task becomes claimable at (epoch ms)".
pub(crate) const DUE_CHANNEL: &str = "shepherd_due";
/// Channel of "a workflow's lease was released": standing-by runners may
/// take it.
pub(crate) const LEASE_CHANNEL: &str = "shepherd_lease";
/// Shortest due timer: a clock skew between this host and the database
/// never makes the timer spin.
const MIN_TIMER: Duration = Duration::from_millis(20);

pub(crate) struct Wakeups {
    pub store: Store,
    pub runners: Arc<Runners>,
    pub database_url: String,
    pub safety_interval: Duration,
    /// Ticked when the task change log has likely grown (a work
    /// notification); watchers also look on their own every 250 ms.
    pub task_changes: tokio::sync::watch::Sender<u64>,
}

impl Wakeups {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut listener = Listener::new(
            &self.database_url,
            &[WORK_CHANNEL, DUE_CHANNEL, LEASE_CHANNEL],
            shutdown.clone(),
        );
        // A listener that never connects (tests: the wake-ups that must
        // not depend on notifications).
        let deaf = shepherd_platform::failpoint::hit("scheduler.listener_deaf");
        let mut due_at: Option<Instant> = None;
        let mut safety_at = Instant::now() + self.safety_interval;
        loop {
            tokio::select! {
                // The listener ends on shutdown too; this ends a deaf one.
                _ = shutdown.cancelled() => return,
                heard = listener.next(), if !deaf => match heard {
                    None => return,
                    Some(Heard::Listening) => {
                        self.runners.set_listening(true);
                        // Whatever was sent while nobody listened is lost:
                        // look for it.
                        self.runners.wake_all_for_leases();
                        self.task_changes.send_modify(|n| *n += 1);
                        self.poll(&mut due_at).await;
                        safety_at = Instant::now() + self.safety_interval;
                    }
                    Some(Heard::Notification { channel, payload }) => {
                        self.heard(&channel, &payload, &mut due_at);
                    }
                    Some(Heard::Deaf) => self.runners.set_listening(false),
                },
                _ = sleep_until_some(due_at) => {
                    due_at = None;
                    self.poll(&mut due_at).await;
                }
                _ = tokio::time::sleep_until(safety_at) => {
                    self.poll(&mut due_at).await;
                    safety_at = Instant::now() + self.safety_interval;
                }
            }
        }
    }

    fn heard(&self, channel: &str, payload: &str, due_at: &mut Option<Instant>) {
        match channel {
            WORK_CHANNEL => match payload.parse::<Uuid>() {
                Ok(workflow) => {
                    self.runners.wake(workflow);
                    // A new or finished task: watchers look now.
                    self.task_changes.send_modify(|n| *n += 1);
                }
                Err(_) => tracing::warn!(payload, "a wake-up names no workflow"),
            },
            LEASE_CHANNEL => match payload.parse::<Uuid>() {
                Ok(workflow) => self.runners.wake_for_lease(workflow),
                Err(_) => tracing::warn!(payload, "a lease release names no workflow"),
            },
            DUE_CHANNEL => match payload.parse::<u64>() {
                Ok(millis) => {
                    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(millis);
                    arm(due_at, at);
                }
                Err(_) => tracing::warn!(payload, "a due time that is not a time"),
            },
            _ => {}
        }
    }

    /// Wakes every runner here whose workflow has claimable work, and arms
    /// the due timer for the next delayed task.
    async fn poll(&self, due_at: &mut Option<Instant>) {
        let workflows = self.runners.live_workflows();
        match self.store.workflows_with_due_tasks(&workflows).await {
            Ok(due) => {
                for workflow in due {
                    self.runners.wake(workflow);
                }
            }
            Err(err) => tracing::warn!(error = %err, "looking for claimable work failed"),
        }
        match self.store.next_due().await {
            Ok(Some(at)) => arm(due_at, at),
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "looking for delayed work failed"),
        }
    }
}

/// Moves the timer earlier to `at` (never later).
fn arm(due_at: &mut Option<Instant>, at: SystemTime) {
    let wait = at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .max(MIN_TIMER);
    let at = Instant::now() + wait;
    if due_at.is_none_or(|current| at < current) {
        *due_at = Some(at);
    }
}
