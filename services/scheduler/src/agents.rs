//! The scheduler's view of which agents are ready, kept current by the
//! event stream and corrected by every level pass. Runners wait on it.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;
use uuid::Uuid;

#[derive(Default)]
pub(crate) struct AgentView {
    ready: Mutex<HashMap<Uuid, watch::Sender<bool>>>,
}

impl AgentView {
    pub(crate) fn set_ready(&self, agent: Uuid, ready: bool) {
        self.lock()
            .entry(agent)
            .or_insert_with(|| watch::Sender::new(false))
            .send_if_modified(|current| std::mem::replace(current, ready) != ready);
    }

    /// A receiver that sees every readiness change of `agent`.
    pub(crate) fn subscribe(&self, agent: Uuid) -> watch::Receiver<bool> {
        self.lock()
            .entry(agent)
            .or_insert_with(|| watch::Sender::new(false))
            .subscribe()
    }

    /// Level pass: exactly the agents in `ready` are ready.
    pub(crate) fn replace(&self, ready: &HashSet<Uuid>) {
        let mut agents = self.lock();
        for (agent, tx) in agents.iter() {
            let now = ready.contains(agent);
            tx.send_if_modified(|current| std::mem::replace(current, now) != now);
        }
        for agent in ready {
            agents
                .entry(*agent)
                .or_insert_with(|| watch::Sender::new(true));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, watch::Sender<bool>>> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_changes_and_level_replaces() {
        let view = AgentView::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut rx = view.subscribe(a);
        assert!(!*rx.borrow());
        view.set_ready(a, true);
        rx.changed().await.unwrap();
        assert!(*rx.borrow_and_update());
        view.replace(&[b].into());
        rx.changed().await.unwrap();
        assert!(!*rx.borrow());
        assert!(*view.subscribe(b).borrow() && !*view.subscribe(a).borrow());
    }
}
