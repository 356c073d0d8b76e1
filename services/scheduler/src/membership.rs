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
//!
//! The membership row is also what keeps this replica's leases alive: a
//! lease is valid while its owner's row is (see `store::leases`), so one
//! statement per replica every third of the TTL renews all of them. If this
//! replica fails to renew its row for a whole TTL, its leases may have been
//! taken: it bumps its *epoch*, and every runner holding a lease of an
//! older epoch drops it and takes it again (or finds it taken).
//!
//! A replica whose process dies is not waited for: each replica holds a
//! session lock (`shepherd_platform::session_lock`) while it lives and
//! names it in its row, and every replica checks the other rows' locks
//! four times a second. A live row whose lock is free belongs to a process
//! that is certainly gone: its row is ended at once, and with it its
//! leases, so its workflows move within a check plus a takeover rather
//! than a whole TTL. A replica that is alive but stopped keeps its lock,
//! and so its leases until its row expires. A replica that lost its lock
//! connection while alive may have been ended by the others: it gives its
//! leases up at once (as when its row lapses) and joins again with a new
//! connection; a renewal that finds its row ended moves the epoch too.
//!
//! Runners never poll any of this: `subscribe` gives a counter that moves
//! whenever something they decide on changed (the live or settled set, the
//! epoch), and they re-evaluate then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use shepherd_platform::backoff::Backoff;
use shepherd_platform::session_lock::{self, SessionLock};

use crate::store::Store;

/// The live replicas as this one last saw them.
pub(crate) struct Membership {
    me: String,
    standby: bool,
    view: Mutex<View>,
    /// Moves whenever runners should re-evaluate their leases.
    changes: watch::Sender<u64>,
}

#[derive(Default)]
struct View {
    /// Live active replicas other than this one, and when this replica
    /// first saw each.
    live: HashMap<String, Instant>,
    /// Which of them were settled (live for a TTL) at the last heartbeat.
    settled: Vec<String>,
    /// Until when this replica's own row (and so its leases) is surely
    /// valid: the start of its last successful renewal plus the TTL.
    valid_until: Option<Instant>,
    /// Bumped when the row may have lapsed (see the module docs).
    epoch: u64,
    lapsed: bool,
}

impl Membership {
    pub(crate) fn new(me: String, standby: bool) -> Arc<Self> {
        Arc::new(Self {
            me,
            standby,
            view: Mutex::new(View::default()),
            changes: watch::Sender::new(0),
        })
    }

    /// A counter that moves whenever the live or settled replicas or this
    /// replica's epoch change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The epoch leases are held under now, if this replica's row is valid
    /// (None: it may have lapsed; hold and take no lease).
    pub(crate) fn lease_epoch(&self) -> Option<u64> {
        let view = self.lock();
        view.valid_until
            .is_some_and(|until| Instant::now() < until)
            .then_some(view.epoch)
    }

    /// The replica `workflow` prefers, if it is another one that has been
    /// live for at least `settled` (a replica that just joined, or that
    /// this one has not seen, is not preferred yet: no premature moves).
    pub(crate) fn preferred_elsewhere(&self, workflow: Uuid, settled: Duration) -> Option<String> {
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

    #[cfg(test)]
    fn update(&self, live: Vec<String>) {
        self.update_at(live, false, Instant::now(), Duration::ZERO);
    }

    /// A successful renewal that started at `renewed` (so the row is valid
    /// until `renewed + ttl`) saw `live`; `was_ended`: it found the row
    /// ended before (by another replica, or by expiry).
    fn update_at(&self, live: Vec<String>, was_ended: bool, renewed: Instant, ttl: Duration) {
        let mut view = self.lock();
        let mut changed = false;
        let cut_short = was_ended && view.valid_until.is_some();
        if view.lapsed || cut_short || view.valid_until.is_some_and(|until| renewed >= until) {
            // A gap: the row expired before this renewal.
            view.epoch += 1;
            view.lapsed = false;
            changed = true;
        }
        if view.valid_until.is_none() {
            changed = true;
        }
        view.valid_until = Some(renewed + ttl);
        changed |= self.see_live(&mut view, live, ttl);
        drop(view);
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// A check of the other replicas' locks saw `live` (it renewed
    /// nothing).
    fn observe(&self, live: Vec<String>, ttl: Duration) {
        let mut view = self.lock();
        let changed = self.see_live(&mut view, live, ttl);
        drop(view);
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Takes `live` as the live set; whether that changed the live or the
    /// settled replicas.
    fn see_live(&self, view: &mut View, live: Vec<String>, ttl: Duration) -> bool {
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
        let mut settled: Vec<String> = view
            .live
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) >= ttl)
            .map(|(id, _)| id.clone())
            .collect();
        settled.sort();
        let mut ids: Vec<&String> = view.live.keys().collect();
        ids.sort();
        let mut before: Vec<&String> = previous.keys().collect();
        before.sort();
        let changed = ids != before || settled != view.settled;
        view.settled = settled;
        changed
    }

    /// This replica's session lock is gone, though it lives: the others
    /// may end its row (and take its leases) any moment, so no lease of it
    /// is vouched for from now on.
    fn lock_lost(&self) {
        let mut view = self.lock();
        view.valid_until = None;
        if !view.lapsed {
            view.lapsed = true;
            view.epoch += 1;
        }
        drop(view);
        tracing::warn!(
            "the replica's session lock was lost; runners give their leases up until it joins again"
        );
        self.changes.send_modify(|n| *n += 1);
    }

    /// A failed renewal: past the row's validity, leases may be taken.
    fn renewal_failed(&self) {
        let mut view = self.lock();
        let expired = view
            .valid_until
            .is_some_and(|until| Instant::now() >= until);
        if expired && !view.lapsed {
            view.lapsed = true;
            view.epoch += 1;
            drop(view);
            tracing::warn!("replica membership lapsed; runners give their leases up");
            self.changes.send_modify(|n| *n += 1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        // A map of names: no invariant a panicking holder could break.
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds this replica's session lock, renews its membership every
    /// third of `ttl` and checks the others' locks every `CHECK_EVERY`,
    /// until `shutdown`; then leaves (so its share moves at once).
    pub(crate) async fn run(
        self: Arc<Self>,
        store: Store,
        database_url: String,
        ttl: Duration,
        shutdown: CancellationToken,
    ) {
        // None: no lock (no randomness); a crash of this replica is then
        // noticed by expiry only, as before.
        let key = session_lock::random_key()
            .inspect_err(|err| {
                tracing::warn!(error = %err, "no session lock key; a crash of this replica is noticed by expiry only");
            })
            .ok();
        let mut lock: Option<SessionLock> = None;
        let mut backoff = Backoff::new(CHECK_EVERY, ttl / 3);
        let mut renew_at = Instant::now();
        loop {
            if let (None, Some(key)) = (&lock, key) {
                match SessionLock::acquire(&database_url, key).await {
                    Ok(taken) => {
                        lock = Some(taken);
                        backoff.reset();
                        renew_at = Instant::now();
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "could not take the replica's session lock")
                    }
                }
            }
            let locked = lock.is_some() || key.is_none();
            if locked && Instant::now() >= renew_at {
                // A renewal without the lock would be ended by the others
                // at once: it waits for the lock.
                let renewed = Instant::now();
                match store
                    .replica_heartbeat(&self.me, self.standby, ttl, key)
                    .await
                {
                    Ok(renewal) => self.update_at(renewal.live, renewal.was_ended, renewed, ttl),
                    Err(err) => {
                        tracing::warn!(error = %err, "renewing replica membership failed");
                        self.renewal_failed();
                    }
                }
                renew_at = renewed + ttl / 3;
            } else {
                match store.end_gone_replicas(&self.me).await {
                    Ok(live) => self.observe(live, ttl),
                    Err(err) => tracing::debug!(error = %err, "checking the other replicas failed"),
                }
            }
            let pause = if locked {
                CHECK_EVERY
            } else {
                backoff.next_delay()
            };
            let lost = async {
                match &lock {
                    Some(lock) => lock.lost().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                () = lost => {
                    lock = None;
                    self.lock_lost();
                }
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if let Err(err) = store.replica_leave(&self.me).await {
            tracing::warn!(error = %err, "leaving the replica set failed; membership expires");
        }
    }
}

/// How often a replica checks the others' session locks: a dead replica's
/// workflows stall for at most this long, plus a takeover.
const CHECK_EVERY: Duration = Duration::from_millis(250);

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

    #[tokio::test]
    async fn a_lapsed_membership_moves_the_epoch_and_tells_the_runners() {
        let membership = Membership::new("a".into(), false);
        let mut changes = membership.subscribe();
        assert_eq!(membership.lease_epoch(), None, "no lease before joining");

        membership.update_at(Vec::new(), false, Instant::now(), Duration::from_millis(20));
        assert_eq!(membership.lease_epoch(), Some(0));
        assert!(changes.has_changed().unwrap(), "joining is a change");
        changes.borrow_and_update();

        // Not renewed in time: no lease can be vouched for, and the failed
        // renewal after expiry moves the epoch (leases may be taken).
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(membership.lease_epoch(), None);
        membership.renewal_failed();
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();

        membership.update_at(Vec::new(), false, Instant::now(), Duration::from_secs(60));
        let epoch = membership.lease_epoch().expect("renewed");
        assert!(epoch >= 1, "leases of epoch 0 are stale: {epoch}");
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();

        // A renewal in time changes nothing runners decide on.
        membership.update_at(Vec::new(), false, Instant::now(), Duration::from_secs(60));
        assert_eq!(membership.lease_epoch(), Some(epoch));
        assert!(!changes.has_changed().unwrap());

        // A replica joining is a change.
        membership.update_at(
            vec!["b".into()],
            false,
            Instant::now(),
            Duration::from_secs(60),
        );
        assert!(changes.has_changed().unwrap());
    }

    #[tokio::test]
    async fn a_lost_lock_or_an_ended_row_moves_the_epoch() {
        let membership = Membership::new("a".into(), false);
        let ttl = Duration::from_secs(60);
        membership.update_at(Vec::new(), false, Instant::now(), ttl);
        let joined = membership.lease_epoch().expect("joined");
        let mut changes = membership.subscribe();

        // The lock's connection ended: nothing is vouched for at once,
        // however long the row had left.
        membership.lock_lost();
        assert_eq!(membership.lease_epoch(), None);
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        membership.update_at(Vec::new(), false, Instant::now(), ttl);
        let rejoined = membership.lease_epoch().expect("joined again");
        assert!(rejoined > joined, "leases taken before the loss are stale");

        // A renewal that finds its row ended by another replica, though
        // this one thought it valid: leases may have been taken meanwhile.
        membership.update_at(Vec::new(), true, Instant::now(), ttl);
        let after = membership.lease_epoch().expect("renewed");
        assert!(after > rejoined, "{after} after {rejoined}");
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
