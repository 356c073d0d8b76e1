//! A runner's lease on its workflow: kept while this replica's membership
//! lasts, taken when free (or left for a preferred replica for one TTL),
//! handed over to the preferred replica.

use std::time::Duration;

use tokio::time::Instant;

use super::{RETRY, Runner, RunnerState};
use crate::store::LeaseAcquisition;

impl Runner {
    /// Holds the workflow's lease: keeps it while this replica's membership
    /// (which keeps it alive) has not lapsed since it was taken, (re)takes
    /// it otherwise. Returns the term to claim with, or why there is none.
    ///
    /// Leases spread over the live replicas: a free lease that another
    /// replica is preferred for (see `membership`) is left to it for one
    /// TTL before this replica takes it anyway, and a held one that another
    /// settled replica is preferred for is handed over (re-evaluated on
    /// every membership change).
    pub(super) async fn keep_lease(
        &self,
        lease: &mut Option<HeldLease>,
        deferred: &mut Option<Instant>,
    ) -> Result<Held, NoLease> {
        let ttl = self.ctx.lease_ttl;
        let now = Instant::now();
        let Some(epoch) = self.ctx.membership.lease_epoch() else {
            // Until the membership row is renewed no lease can be vouched
            // for; a renewal is a membership change, which ends the wait.
            // A lease held stays remembered: its epoch is older by then,
            // so it is taken again first thing (below).
            return Err(NoLease::Standby {
                reason: "this replica's membership is not renewed (database unreachable?)"
                    .to_owned(),
                retry_in: None,
            });
        };
        if let Some(held) = lease.as_ref() {
            if held.epoch == epoch {
                if let Some(other) = self.ctx.membership.preferred_elsewhere(self.workflow, ttl) {
                    let term = held.term;
                    *lease = None;
                    *deferred = Some(now);
                    // Shown as standing by before the lease is free: this
                    // replica never shows RUNNING once the taker can.
                    let reason = format!("handed over to replica {other}");
                    self.report(RunnerState::Standby, &reason);
                    self.hand_over(term).await;
                    return Err(NoLease::Standby {
                        reason,
                        retry_in: Some(ttl),
                    });
                }
                return Ok(Held::Kept(held.term));
            }
            // Taken under an older epoch: the membership lapsed since, and
            // another replica may hold it now. Take it again (or learn who).
            tracing::warn!(workflow = %self.workflow, "membership lapsed; re-taking the runner lease");
            crate::metrics::lease_changed("lost");
        }
        // A lease this replica held is taken again at once, preferred or
        // not: it may still be its own, and then no one else can take it
        // (a preferred replica gets it by the hand-over above). Only a
        // lease this replica did not hold is left to the preferred one.
        let previous = lease.take();
        if previous.is_some() {
            *deferred = None;
        } else if let Some(other) = self
            .ctx
            .membership
            .preferred_elsewhere(self.workflow, Duration::ZERO)
        {
            let since = *deferred.get_or_insert(now);
            let until = since + ttl;
            if now < until {
                return Err(NoLease::Standby {
                    reason: format!("replica {other} is preferred for this workflow"),
                    retry_in: Some(until - now),
                });
            }
        }
        match self
            .ctx
            .store
            .acquire_lease(self.workflow, &self.ctx.replica)
            .await
        {
            Ok(LeaseAcquisition::Acquired {
                term,
                in_flight,
                claimable,
            }) => {
                *deferred = None;
                *lease = Some(HeldLease { term, epoch });
                crate::metrics::lease_changed("acquired");
                Ok(Held::Acquired {
                    term,
                    in_flight,
                    claimable,
                })
            }
            Ok(LeaseAcquisition::HeldBy { owner }) if owner.is_empty() => Err(NoLease::Standby {
                reason: "the lease is changing hands".to_owned(),
                retry_in: Some(RETRY),
            }),
            // Woken when the holder releases it or its membership changes.
            Ok(LeaseAcquisition::HeldBy { owner }) => Err(NoLease::Standby {
                reason: format!("replica {owner} holds the lease"),
                retry_in: None,
            }),
            Ok(LeaseAcquisition::WorkflowDisabled) => {
                Err(NoLease::Stop("workflow disabled".to_owned()))
            }
            Err(err) => {
                // Still to be taken again first thing.
                *lease = previous;
                Err(NoLease::Standby {
                    reason: format!("could not take the lease: {err}"),
                    retry_in: Some(RETRY),
                })
            }
        }
    }

    /// Gives the lease up so that the preferred replica takes it now.
    pub(super) async fn hand_over(&self, term: i64) {
        match self
            .ctx
            .store
            .release_lease(self.workflow, &self.ctx.replica, term)
            .await
        {
            Ok(()) => crate::metrics::lease_changed("released"),
            Err(err) => {
                tracing::warn!(workflow = %self.workflow, error = %err, "handing the lease over failed; it lapses with this replica's membership");
            }
        }
    }
}

/// The lease a runner holds: valid while this replica's membership has
/// not lapsed since `epoch`.
pub(super) struct HeldLease {
    pub(super) term: i64,
    pub(super) epoch: u64,
}

/// The lease a runner may claim under.
pub(super) enum Held {
    /// Held already (renewed if it was due).
    Kept(i64),
    /// Just taken: the workflow may have been run elsewhere until now
    /// (`in_flight`: it has tasks in flight to settle; `claimable`: it has
    /// pending tasks due now).
    Acquired {
        term: i64,
        in_flight: bool,
        claimable: bool,
    },
}

/// Why a runner holds no lease.
pub(super) enum NoLease {
    /// Another replica runs the workflow (or the lease cannot be taken
    /// now): try again in `retry_in`, or when woken (None: only then).
    Standby {
        reason: String,
        retry_in: Option<Duration>,
    },
    /// There is nothing to run: stop with this reason.
    Stop(String),
}
