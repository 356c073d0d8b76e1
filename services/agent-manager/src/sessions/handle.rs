//! What dispatch holds of a live session: where to send its tasks, how to
//! end it, and which of its tasks the agent accepted.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::protocol::ToAgent;

/// What dispatch needs to deliver to a live session.
#[derive(Clone, Debug)]
pub(crate) struct SessionHandle {
    pub session_id: Uuid,
    pub generation: u64,
    /// Tasks to forward to the agent. Closed once the session loop ended, so
    /// a send that succeeds was taken before the session's tasks were
    /// declared lost.
    pub tasks: mpsc::Sender<ToAgent>,
    /// Cancelling it ends the session loop.
    pub cancel: CancellationToken,
    /// Tasks the agent accepted on this session and has not completed.
    pub accepted: AcceptedTasks,
}

/// Tasks accepted on a session and not yet completed. Acceptance changes
/// no stored state (it is an event); the session loop keeps this set so
/// that a repeated dispatch can report the task as accepted.
#[derive(Clone, Debug, Default)]
pub(crate) struct AcceptedTasks(Arc<Mutex<HashSet<String>>>);

impl AcceptedTasks {
    pub(crate) fn contains(&self, task_id: &str) -> bool {
        self.lock().contains(task_id)
    }

    pub(super) fn insert(&self, task_id: &str) {
        self.lock().insert(task_id.to_owned());
    }

    pub(super) fn remove(&self, task_id: &str) {
        self.lock().remove(task_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A set of ids holds no invariant a panicking holder could break.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
