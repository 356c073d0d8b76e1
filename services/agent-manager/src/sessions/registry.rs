//! The registry of live sessions that dispatch reads. Only an agent's
//! supervisor installs or removes its entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;
use uuid::Uuid;

use super::handle::SessionHandle;

/// The current session of each agent, and the agents whose process is
/// expected to reconnect (its session dropped, or the manager restarted and
/// adopted it): their tasks stay in flight until it does or the window
/// closes.
#[derive(Clone, Default)]
pub(crate) struct Sessions {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    live: HashMap<Uuid, SessionHandle>,
    reconnecting: HashMap<Uuid, Instant>,
}

impl Sessions {
    pub(crate) fn get(&self, agent: Uuid) -> Option<SessionHandle> {
        self.lock().live.get(&agent).cloned()
    }

    /// Whether the agent has a live session (without cloning its handle).
    pub(crate) fn is_live(&self, agent: Uuid) -> bool {
        self.lock().live.contains_key(&agent)
    }

    /// Makes `session` current; returns the one it replaced.
    pub(crate) fn install(&self, agent: Uuid, session: SessionHandle) -> Option<SessionHandle> {
        let mut registry = self.lock();
        registry.reconnecting.remove(&agent);
        registry.live.insert(agent, session)
    }

    /// Removes the agent's session if it is `session_id`.
    pub(crate) fn remove_if_current(&self, agent: Uuid, session_id: Uuid) -> Option<SessionHandle> {
        let mut registry = self.lock();
        match registry.live.get(&agent) {
            Some(current) if current.session_id == session_id => registry.live.remove(&agent),
            _ => None,
        }
    }

    pub(crate) fn remove(&self, agent: Uuid) -> Option<SessionHandle> {
        self.lock().live.remove(&agent)
    }

    /// The agent's process is expected back on a new session until `until`.
    pub(crate) fn expect_reconnect(&self, agent: Uuid, until: Instant) {
        self.lock().reconnecting.insert(agent, until);
    }

    pub(crate) fn stop_expecting(&self, agent: Uuid) {
        self.lock().reconnecting.remove(&agent);
    }

    /// Whether the agent's process may still come back with the tasks it
    /// holds (so they are in flight, not lost).
    pub(crate) fn reconnecting(&self, agent: Uuid) -> bool {
        self.lock()
            .reconnecting
            .get(&agent)
            .is_some_and(|until| *until > Instant::now())
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().live.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The map holds no invariant a panicking holder could break halfway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
