//! Runners: at most one per workflow, each a task that waits for its agent
//! and feeds it the workflow's pending tasks.
//!
//! The registry is one map under one lock. `ensure_running` checks and
//! claims a workflow's slot in the same critical section, so two concurrent
//! starters (an event, a level pass, an API call) can never both start a
//! runner; "already running" is a normal, quiet answer.
//!
//! "Live" means running *and* making progress: a runner whose task has
//! finished, or that has not reported progress for `WEDGE_TIMEOUT`, counts
//! as missing, so every recovery path replaces it.
//!
//! Across replicas, a runner claims tasks only while it holds its
//! workflow's lease (see `store::leases`): the other replicas' runners of
//! the workflow wait on standby and take over when the holder's membership
//! expires or it releases the lease.
//!
//! Runners never poll. A resting runner waits for a wake-up (`wakeups`:
//! work for it, or for a standby, a released lease), its agent's readiness,
//! or a membership change (`Membership::subscribe`); it marks itself
//! resting meanwhile, so a runner that sleeps for hours is not taken for
//! wedged.

use shepherd_platform::timer::sleep_until_some;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use crate::agents::AgentView;
use crate::manager_client::{ManagerClient, ManagerError, OutgoingTask};
use crate::settle::{self, Applied};
use crate::store::{ClaimRequest, Claimed, InFlightScope, Store};

/// Reason a runner stops when its agent stays unready past the window.
pub(crate) const AGENT_NOT_READY: &str = "agent not ready";
/// How soon a runner tries again after a failure (database or
/// agent-manager unreachable).
const RETRY: Duration = Duration::from_secs(1);
/// `progress` of a runner that rests (waits on wake-ups, not stuck).
const RESTING: u64 = u64::MAX;
/// No progress for this long: the runner is wedged and will be replaced.
const WEDGE_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) use crate::model::RunnerState;

/// What `ListRunners` shows of a workflow's runner.
#[derive(Debug, Clone)]
pub(crate) struct RunnerInfo {
    pub state: RunnerState,
    pub reason: String,
    pub since: SystemTime,
    pub starts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartOutcome {
    Started,
    AlreadyRunning,
}

/// What runners share.
pub(crate) struct RunnerContext {
    pub store: Store,
    pub agents: Arc<AgentView>,
    pub manager: ManagerClient,
    pub startup_window: Duration,
    /// This replica's name as a lease owner.
    pub replica: String,
    /// How long this replica's membership, and with it every lease it
    /// holds, lasts unless renewed (renewed every third of it).
    pub lease_ttl: Duration,
    /// The live replicas, for spreading leases over them.
    pub membership: Arc<crate::membership::Membership>,
}

mod lease;
mod registry;

use lease::{Held, HeldLease, NoLease};
pub(crate) use registry::Runners;
use registry::{LEASE, PLACEMENT, Signals, WORK};

/// One workflow's runner.
struct Runner {
    id: u64,
    workflow: Uuid,
    agent: Uuid,
    ctx: Arc<RunnerContext>,
    runners: Arc<Runners>,
    signals: Arc<Signals>,
}

/// What ends a runner's rest besides cancellation, readiness and membership
/// changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WakeOn {
    /// Work for the workflow (it holds the lease).
    Work,
    /// The lease released elsewhere (it stands by).
    Lease,
}

impl Runner {
    /// Runs the loop so that even a panic frees the slot (one task per
    /// runner: an aborted runner, replaced as wedged, ends whole).
    async fn supervise(self) {
        use futures_util::FutureExt;
        let (workflow, id, runners) = (self.workflow, self.id, self.runners.clone());
        let reason = match std::panic::AssertUnwindSafe(self.run())
            .catch_unwind()
            .await
        {
            Ok(reason) => reason,
            Err(_) => "runner panicked".to_owned(),
        };
        tracing::info!(%workflow, runner = id, %reason, "runner stopped");
        runners.report(workflow, id, RunnerState::Stopped, &reason);
    }

    async fn run(self) -> String {
        let mut lease = None;
        let reason = self.serve(&mut lease).await;
        Box::pin(self.stop_waiting_for_keys()).await;
        if let Some(held) = lease {
            // Let another replica take over now rather than at expiry.
            let released = Box::pin(self.ctx.store.release_lease(
                self.workflow,
                &self.ctx.replica,
                held.term,
            ))
            .await;
            match released {
                Ok(()) => crate::metrics::lease_changed("released"),
                Err(err) => {
                    tracing::warn!(workflow = %self.workflow, error = %err, "releasing the runner lease failed; it will expire");
                }
            }
        }
        reason
    }

    async fn serve(&self, lease: &mut Option<HeldLease>) -> String {
        let mut ready = self.ctx.agents.subscribe(self.agent);
        // Since when this runner has held back from a free lease that
        // another replica is preferred for.
        let mut deferred = None;
        // Just back from waiting for the agent.
        let mut back = false;
        loop {
            self.beat();
            if !*ready.borrow_and_update() {
                self.report(
                    RunnerState::WaitingForAgent,
                    "waiting for the agent to be ready",
                );
                // It claims nothing meanwhile: no slot is kept for it.
                Box::pin(self.stop_waiting_for_keys()).await;
                match self.wait_for_agent(&mut ready).await {
                    Some(reason) => return reason,
                    None => {
                        back = true;
                        continue;
                    }
                }
            }
            // Seen before deciding: a change from now on ends the next rest.
            self.signals.take(PLACEMENT);
            // The big futures (database and agent-manager calls) are boxed:
            // a runner rests far more than it works, and a resting runner
            // should cost only what resting needs.
            let claim = match Box::pin(self.keep_lease(lease, &mut deferred)).await {
                Ok(Held::Kept(term)) => {
                    // Back from waiting for its agent, with its lease: it
                    // runs again now, before its claim's round trip (a
                    // restarted agent's runners are RUNNING as soon as
                    // the agent is ready).
                    if std::mem::take(&mut back) {
                        self.report(RunnerState::Running, "");
                    }
                    Some(term)
                }
                Ok(Held::Acquired {
                    term,
                    in_flight,
                    claimable,
                }) => {
                    // Running from here on: this replica records the
                    // workflow's task events from now (a standby skips
                    // them), and the settle below covers those that came
                    // before.
                    self.report(RunnerState::Running, "");
                    // A workflow taken over (or back) may have tasks in
                    // flight that nobody settles: the previous holder died
                    // between claim and dispatch, or its reports were lost.
                    if in_flight {
                        Box::pin(self.settle_in_flight()).await;
                    }
                    // Nothing was due when the lease was taken: a claim
                    // would find nothing. This runner was registered before
                    // it took the lease, so work that comes after wakes it.
                    (in_flight || claimable).then_some(term)
                }
                Err(NoLease::Stop(reason)) => return reason,
                Err(NoLease::Standby { reason, retry_in }) => {
                    self.report(RunnerState::Standby, &reason);
                    let until = retry_in.map(|retry_in| Instant::now() + retry_in);
                    match self.rest(&mut ready, until, WakeOn::Lease).await {
                        Some(reason) => return reason,
                        None => continue,
                    }
                }
            };
            let retry_in = match claim {
                Some(term) => Box::pin(self.claim_and_dispatch(term)).await,
                None => {
                    self.report(RunnerState::Running, "");
                    None
                }
            };
            // The claim took all the room or all the work there was; more
            // comes with a wake-up (see `wakeups`: a trigger, a finished
            // task, a due time; one sent meanwhile stays pending in `Signals`).
            let until = retry_in.map(|retry_in| Instant::now() + retry_in);
            if let Some(reason) = self.rest(&mut ready, until, WakeOn::Work).await {
                return reason;
            }
        }
    }

    /// Claims what there is room for and dispatches it. Returns when to
    /// try again without a wake-up (after a failure), if at all.
    async fn claim_and_dispatch(&self, term: i64) -> Option<Duration> {
        let claim_span = tracing::debug_span!("claim", workflow_id = %self.workflow);
        let request = ClaimRequest {
            workflow: self.workflow,
            owner: self.ctx.replica.clone(),
            term,
        };
        match self.ctx.store.claim(request).instrument(claim_span).await {
            Ok(claim) => {
                self.signals
                    .waits_for_key
                    .store(claim.waiting_for_key, Ordering::Relaxed);
                let (claimed, retry_in) = (claim.tasks, claim.retry_in);
                if !claimed.is_empty() {
                    // A crash here leaves the tasks DISPATCHED but never
                    // sent: the settle pass delivers them.
                    shepherd_platform::failpoint::hit("scheduler.after_claim");
                }
                // Claimed together, dispatched concurrently (they may run
                // concurrently anyway: there was room for all).
                let results = futures_util::future::join_all(
                    claimed.into_iter().map(|task| self.dispatch(task)),
                )
                .await;
                match results.into_iter().find_map(Result::err) {
                    Some(ManagerError::Unavailable(reason)) => {
                        self.report(
                            RunnerState::Stalled,
                            &format!("agent-manager unreachable: {reason}"),
                        );
                        Some(RETRY)
                    }
                    _ => {
                        self.report(RunnerState::Running, "");
                        retry_in
                    }
                }
            }
            Err(err) => {
                tracing::warn!(workflow = %self.workflow, error = %err, "claiming tasks failed");
                self.report(
                    RunnerState::Stalled,
                    &format!("database unreachable: {err}"),
                );
                Some(RETRY)
            }
        }
    }

    /// The workflow no longer waits for a key's slot, if it did: a slot
    /// kept for a runner that does not claim would stay unused.
    async fn stop_waiting_for_keys(&self) {
        if !self.signals.waits_for_key.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Err(err) = self.ctx.store.stop_waiting_for_keys(self.workflow).await {
            // Its lease lapses when this replica goes; until then a slot
            // may be kept for it in vain, and only while it has room and
            // a claimable task.
            tracing::warn!(workflow = %self.workflow, error = %err, "could not stop waiting for a key's slot");
        }
    }

    /// Waits for the agent to be ready for at most the startup window.
    /// Returns the reason to stop, or None once the agent is ready.
    async fn wait_for_agent(&self, ready: &mut watch::Receiver<bool>) -> Option<String> {
        let deadline = Instant::now() + self.ctx.startup_window;
        loop {
            if *ready.borrow_and_update() {
                return None;
            }
            if Instant::now() >= deadline {
                return Some(AGENT_NOT_READY.to_owned());
            }
            self.resting();
            let stopped = tokio::select! {
                stopped = self.signals.wait(0) => stopped,
                _ = ready.changed() => false,
                _ = sleep_until_some(Some(deadline)) => false,
            };
            self.beat();
            if stopped {
                return Some("stopped".to_owned());
            }
        }
    }

    /// Rests until a wake-up of the given kind, a readiness or membership
    /// change, or `until`. Returns the reason to stop if stopped.
    async fn rest(
        &self,
        ready: &mut watch::Receiver<bool>,
        until: Option<Instant>,
        wake_on: WakeOn,
    ) -> Option<String> {
        self.resting();
        let wanted = PLACEMENT
            | match wake_on {
                WakeOn::Work => WORK,
                WakeOn::Lease => LEASE,
            };
        let stopped = tokio::select! {
            stopped = self.signals.wait(wanted) => stopped,
            _ = ready.changed() => false,
            _ = sleep_until_some(until) => false,
        };
        self.beat();
        stopped.then(|| "stopped".to_owned())
    }

    /// Dispatches one claimed task and records the answer. Returns the
    /// manager's error if the task was not delivered.
    async fn dispatch(&self, task: Claimed) -> Result<(), ManagerError> {
        let span = tracing::info_span!(
            "dispatch",
            workflow_id = %self.workflow,
            agent_id = %self.agent,
            task_id = %task.id,
            attempt = task.attempts,
            trace_id = tracing::field::Empty,
        );
        // Continue the trace of the call that created the task.
        shepherd_platform::telemetry::propagation::adopt_from_map(&span, &task.trace_context);
        async {
            if shepherd_platform::failpoint::hit("scheduler.before_dispatch") {
                // As if the call were lost on the way: the task stays
                // DISPATCHED until a settle pass finds it.
                return Ok(());
            }
            let started = tokio::time::Instant::now();
            let outgoing = OutgoingTask {
                agent: self.agent,
                task_id: task.id.clone(),
                attempt: task.attempts,
                workflow_id: self.workflow,
                workflow_name: task.workflow_name,
                prompt: task.prompt,
                script: task.script,
                fields: task.fields,
                timeout: task.timeout,
                tool_policy: task.tool_policy,
            };
            let answer = self.ctx.manager.dispatch(outgoing).await;
            crate::metrics::dispatched(started.elapsed(), answer.is_ok());
            let failure = answer.as_ref().err().cloned();
            match settle::apply(&self.ctx.store, &task.id, task.attempts, answer).await {
                Ok(Applied::Finished | Applied::Requeued) => self.signals.send(WORK),
                Ok(Applied::InFlight) => {}
                Err(err) => tracing::warn!(error = %err, "recording a dispatch failed"),
            }
            failure.map_or(Ok(()), Err)
        }
        .instrument(span)
        .await
    }

    /// Settles this workflow's tasks in flight (see `settle`).
    async fn settle_in_flight(&self) {
        let scope = InFlightScope {
            owner: self.ctx.replica.clone(),
            workflow: Some(self.workflow),
            agent: None,
            min_age: Duration::ZERO,
        };
        if let Err(err) = settle::settle_in_flight(&self.ctx.store, &self.ctx.manager, &scope).await
        {
            tracing::warn!(workflow = %self.workflow, error = %err, "settling tasks in flight failed; the level pass retries");
        }
    }

    fn beat(&self) {
        self.signals
            .progress
            .store(self.runners.now_ms(), Ordering::Relaxed);
    }

    fn resting(&self) {
        self.signals.progress.store(RESTING, Ordering::Relaxed);
    }

    fn report(&self, state: RunnerState, reason: &str) {
        self.runners.report(self.workflow, self.id, state, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    /// A signal sent while the runner is busy is kept for its next wait; a
    /// signal it does not wait for neither ends the wait nor is lost; a
    /// stop ends any wait, before or during it.
    #[tokio::test]
    async fn signals_are_kept_until_waited_for_and_stop_ends_any_wait() {
        let signals = Arc::new(Signals::default());
        signals.send(WORK);
        assert!(!signals.wait(WORK).await, "work sent before the wait");
        signals.send(LEASE);
        let waiting = tokio::spawn({
            let signals = signals.clone();
            async move { signals.wait(WORK).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "a lease signal does not end a wait for work"
        );
        signals.send(WORK);
        assert!(!waiting.await.expect("joined"));
        assert!(!signals.wait(LEASE).await, "the lease signal was kept");
        let waiting = tokio::spawn({
            let signals = signals.clone();
            async move { signals.wait(WORK).await }
        });
        signals.stop();
        assert!(waiting.await.expect("joined"), "stopped while waiting");
        assert!(signals.wait(LEASE).await, "a stop is never consumed");
    }

    /// A runner rests far more than it works: its future (what every idle
    /// runner costs in memory) must stay small, so the big database and
    /// agent-manager calls and its timers are boxed rather than inlined in
    /// it, and it waits for all it is told on one `Notify`.
    #[tokio::test]
    async fn a_runner_future_stays_small() {
        let pool = shepherd_platform::db::connect("postgres://nobody@127.0.0.1:1/none", 1)
            .expect("a lazy pool");
        let ctx = Arc::new(RunnerContext {
            store: Store::new(pool.clone(), &pool),
            agents: Arc::new(AgentView::default()),
            manager: ManagerClient::new("http://127.0.0.1:1", None, None).expect("a lazy client"),
            startup_window: Duration::from_secs(1),
            replica: "r".into(),
            lease_ttl: Duration::from_secs(10),
            membership: crate::membership::Membership::new("r".into(), false),
        });
        let runners = Runners::new(ctx.clone(), CancellationToken::new());
        let runner = Runner {
            id: 1,
            workflow: Uuid::now_v7(),
            agent: Uuid::now_v7(),
            ctx,
            runners,
            signals: Arc::new(Signals::default()),
        };
        let size = std::mem::size_of_val(&runner.supervise());
        assert!(size <= 840, "a runner's future takes {size} bytes");
    }
}
