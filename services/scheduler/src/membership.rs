//! Which replicas share the work, and which one each workflow prefers.
//!
//! Every replica renews a row in `scheduler.replicas` (every third of the
//! lease TTL) and reads the live set back. A workflow prefers the replica
//! that rendezvous hashing picks among the live ones: every replica
//! computes the same answer from the same set, and when a replica joins or
//! leaves only the workflows it wins or held move. Preference only steers
//! who takes a free lease (the others hold back for a while) and who hands
//! a held one over; the lease row stays the only authority on who runs a
//! workflow, so a stale or split view of the membership can delay a
//! takeover but never run a workflow twice.
//!
//! A standby replica (`SCHEDULER_STANDBY`) is never preferred while an
//! active replica is alive: it takes a workflow only when the lease is left
//! free for a whole TTL (every active replica is gone), and hands it back
//! once an active replica is settled again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::Store;

/// The live replicas as this one last saw them.
pub struct Membership {
    me: String,
    standby: bool,
    view: Mutex<View>,
}

#[derive(Default)]
struct View {
    /// Live active replicas other than this one, and when this replica
    /// first saw each.
    live: HashMap<String, Instant>,
}

impl Membership {
    pub fn new(me: String, standby: bool) -> Arc<Self> {
        Arc::new(Self {
            me,
            standby,
            view: Mutex::new(View::default()),
        })
    }

    /// The replica `workflow` prefers, if it is another one that has been
    /// live for at least `settled` (a replica that just joined, or that
    /// this one has not seen, is not preferred yet: no premature moves).
    pub fn preferred_elsewhere(&self, workflow: Uuid, settled: Duration) -> Option<String> {
        let view = self.lock();
        let now = Instant::now();
        // A standby competes only when no active replica is alive.
        let me = (!self.standby || view.live.is_empty()).then_some(&self.me);
        let preferred = view
            .live
            .keys()
            .chain(me)
            .max_by_key(|replica| score(workflow, replica))?;
        if *preferred == self.me {
            return None;
        }
        let seen = view.live.get(preferred)?;
        (now.duration_since(*seen) >= settled).then(|| preferred.clone())
    }

    fn update(&self, live: Vec<String>) {
        let mut view = self.lock();
        let now = Instant::now();
        let previous = std::mem::take(&mut view.live);
        view.live = live
            .into_iter()
            .filter(|id| *id != self.me)
            .map(|id| {
                let seen = previous.get(&id).copied().unwrap_or(now);
                (id, seen)
            })
            .collect();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        // A map of names: no invariant a panicking holder could break.
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Renews this replica's membership every third of `ttl` until
    /// `shutdown`, then leaves (so its share moves at once).
    pub async fn run(self: Arc<Self>, store: Store, ttl: Duration, shutdown: CancellationToken) {
        loop {
            match store.replica_heartbeat(&self.me, self.standby, ttl).await {
                Ok(live) => self.update(live),
                Err(err) => {
                    tracing::warn!(error = %err, "renewing replica membership failed");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(ttl / 3) => {}
            }
        }
        if let Err(err) = store.replica_leave(&self.me).await {
            tracing::warn!(error = %err, "leaving the replica set failed; membership expires");
        }
    }
}

/// Rendezvous score of a (workflow, replica) pair: FNV-1a, stable across
/// processes and versions (unlike std's randomly keyed hasher).
fn score(workflow: Uuid, replica: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in workflow.as_bytes().iter().chain(replica.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Mix the tail so that similar ids spread (FNV alone is weak in its
    // last bytes).
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_defers_to_any_active_replica_and_stands_in_alone() {
        let standby = Membership::new("s".into(), true);
        standby.update(vec!["a".into()]);
        for _ in 0..100 {
            assert_eq!(
                standby.preferred_elsewhere(Uuid::now_v7(), Duration::ZERO),
                Some("a".to_owned())
            );
        }
        standby.update(Vec::new());
        assert_eq!(
            standby.preferred_elsewhere(Uuid::now_v7(), Duration::ZERO),
            None
        );
    }

    #[test]
    fn alone_a_replica_prefers_itself() {
        let membership = Membership::new("a".into(), false);
        assert_eq!(
            membership.preferred_elsewhere(Uuid::now_v7(), Duration::ZERO),
            None
        );
    }

    #[test]
    fn replicas_agree_and_split_the_work() {
        let a = Membership::new("a".into(), false);
        let b = Membership::new("b".into(), false);
        a.update(vec!["a".into(), "b".into()]);
        b.update(vec!["a".into(), "b".into()]);
        let mut on_a = 0;
        for _ in 0..1000 {
            let workflow = Uuid::now_v7();
            let from_a = a.preferred_elsewhere(workflow, Duration::ZERO);
            let from_b = b.preferred_elsewhere(workflow, Duration::ZERO);
            // Exactly one of them defers to the other.
            match (from_a.as_deref(), from_b.as_deref()) {
                (None, Some("a")) => on_a += 1,
                (Some("b"), None) => {}
                other => panic!("disagreement: {other:?}"),
            }
        }
        assert!((350..650).contains(&on_a), "{on_a} of 1000 on a");
    }

    #[test]
    fn a_replica_just_seen_is_not_preferred_yet() {
        let a = Membership::new("a".into(), false);
        a.update(vec!["a".into(), "b".into()]);
        let settled = Duration::from_secs(3600);
        for _ in 0..100 {
            assert_eq!(a.preferred_elsewhere(Uuid::now_v7(), settled), None);
        }
    }
}
