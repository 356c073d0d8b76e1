//! The registry of runners: one slot per workflow under one lock, so that
//! checking for a live runner and claiming the slot is one critical
//! section.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{RESTING, Runner, RunnerContext, RunnerInfo, RunnerState, StartOutcome, WEDGE_TIMEOUT};

struct Slot {
    info: RunnerInfo,
    live: Option<Live>,
    /// Set by the level pass while the workflow's oldest task in flight is
    /// older than the stall threshold: why a RUNNING runner is STALLED.
    stall: Option<String>,
    /// The membership epoch the runner last said it runs under: RUNNING
    /// is shown only while that is the current, vouched-for epoch.
    running_epoch: u64,
}

struct Live {
    /// Distinguishes this runner from a successor in the same slot.
    id: u64,
    signals: Arc<Signals>,
    task: JoinHandle<()>,
}

/// What a runner and its slot share, in one allocation (an idle runner's
/// memory is what 10,000 workflows cost): what it is told, one `Notify` to
/// wake it for any of it, and its progress.
#[derive(Default)]
pub(super) struct Signals {
    /// `STOP`, `WORK` and `LEASE` bits, set by the senders and consumed
    /// by the runner's `wait`.
    pending: AtomicU8,
    wake: Notify,
    /// Milliseconds since the registry's epoch at the runner's last
    /// progress, or `RESTING`.
    pub(super) progress: AtomicU64,
    /// The workflow's last claim left it waiting for a concurrency key's
    /// slot (recorded in the database until the runner says otherwise).
    pub(super) waits_for_key: std::sync::atomic::AtomicBool,
}

/// Stop: set once, never consumed.
const STOP: u8 = 1;
/// Work for the workflow (while the runner holds the lease).
pub(super) const WORK: u8 = 2;
/// The lease released elsewhere (while the runner stands by).
pub(super) const LEASE: u8 = 4;
/// The live replicas changed: where the workflow's lease should be may
/// have changed (forwarded from `Membership::subscribe` to every runner,
/// so that no runner keeps a watch of its own).
pub(super) const PLACEMENT: u8 = 8;

impl Signals {
    fn new(now_ms: u64) -> Self {
        Self {
            progress: AtomicU64::new(now_ms),
            ..Self::default()
        }
    }

    /// Tells the runner `signal`. The bit stays set until the runner
    /// waits for it, so a signal sent while it is busy is not lost.
    pub(super) fn send(&self, signal: u8) {
        self.pending.fetch_or(signal, Ordering::SeqCst);
        // A stored permit if the runner is not waiting yet.
        self.wake.notify_one();
    }

    /// Forgets a pending `signal`: what it says is being looked at now.
    pub(super) fn take(&self, signal: u8) {
        self.pending.fetch_and(!signal, Ordering::SeqCst);
    }

    /// Tells the runner to stop; it ends at its next wait (or at once).
    pub(super) fn stop(&self) {
        self.send(STOP);
    }

    /// Waits for one of the `wanted` signals (consuming them) or a stop.
    /// Returns whether it was told to stop. Cancel-safe: signals are
    /// consumed only in the poll that returns.
    pub(super) async fn wait(&self, wanted: u8) -> bool {
        loop {
            let seen = self.pending.fetch_and(!wanted, Ordering::SeqCst);
            if seen & STOP != 0 {
                return true;
            }
            if seen & wanted != 0 {
                return false;
            }
            // A signal sent after the check left a permit: no lost wake-up.
            self.wake.notified().await;
        }
    }
}

pub(crate) struct Runners {
    ctx: Arc<RunnerContext>,
    slots: Mutex<HashMap<Uuid, Slot>>,
    next_id: AtomicU64,
    epoch: Instant,
    shutdown: CancellationToken,
    /// Whether this replica's wake-up listener is connected (set by
    /// `wakeups`): while it is, every committed change that frees room or
    /// adds work reaches the runner as a notification.
    listening: AtomicBool,
}

impl Runners {
    pub(crate) fn new(ctx: Arc<RunnerContext>, shutdown: CancellationToken) -> Arc<Self> {
        let placement = ctx.membership.subscribe();
        let runners = Arc::new(Self {
            ctx,
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
            shutdown: shutdown.clone(),
            listening: AtomicBool::new(false),
        });
        tokio::spawn(forward_placement(
            Arc::downgrade(&runners),
            placement,
            shutdown,
        ));
        runners
    }

    /// Starts the workflow's runner unless a live one exists. Atomic: the
    /// check and the claim happen under one lock.
    pub(crate) fn ensure_running(self: &Arc<Self>, workflow: Uuid, agent: Uuid) -> StartOutcome {
        let mut slots = self.lock();
        // Checked under the lock: `shutdown` cancels, then stops every
        // runner it finds under the lock, so none can start in between.
        if self.shutdown.is_cancelled() {
            return StartOutcome::AlreadyRunning;
        }
        let slot = slots.entry(workflow).or_insert_with(|| Slot {
            info: RunnerInfo {
                state: RunnerState::Stopped,
                reason: "never started".into(),
                since: SystemTime::now(),
                starts: 0,
            },
            live: None,
            stall: None,
            running_epoch: u64::MAX,
        });
        if let Some(live) = &slot.live {
            if self.is_live(live) {
                return StartOutcome::AlreadyRunning;
            }
            // Finished or wedged: replace it.
            live.signals.stop();
            live.task.abort();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let signals = Arc::new(Signals::new(self.now_ms()));
        let runner = Runner {
            id,
            workflow,
            agent,
            ctx: self.ctx.clone(),
            runners: self.clone(),
            signals: signals.clone(),
        };
        let task = tokio::spawn(runner.supervise());
        slot.info = RunnerInfo {
            state: RunnerState::WaitingForAgent,
            reason: "waiting for the agent to be ready".into(),
            since: SystemTime::now(),
            starts: slot.info.starts + 1,
        };
        slot.live = Some(Live { id, signals, task });
        tracing::info!(%workflow, %agent, runner = id, "runner started");
        crate::metrics::runner_started(workflow, agent);
        StartOutcome::Started
    }

    /// Stops the workflow's runner, if any.
    pub(crate) fn stop(&self, workflow: Uuid, reason: &str) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(&workflow) {
            if let Some(live) = slot.live.take() {
                live.signals.stop();
            }
            if slot.info.state != RunnerState::Stopped {
                slot.info.state = RunnerState::Stopped;
                slot.info.reason = reason.to_owned();
                slot.info.since = SystemTime::now();
            }
        }
    }

    /// Forgets a deleted workflow.
    pub(crate) fn remove(&self, workflow: Uuid) {
        if let Some(slot) = self.lock().remove(&workflow)
            && let Some(live) = slot.live
        {
            live.signals.stop();
        }
    }

    /// Tells the workflow's runner there may be work (a new task, a freed
    /// slot).
    pub(crate) fn wake(&self, workflow: Uuid) {
        self.signal(workflow, WORK);
    }

    /// Wakes the workflow's runner after this replica committed a change
    /// that the database also notifies (an outcome freed a slot), only
    /// while that notification would not reach it: waking it both ways
    /// made it claim twice per finished task, the second time for nothing.
    /// A notification lost because the listener dropped after this check
    /// is made up for when it listens again (`wakeups` then wakes every
    /// runner with claimable work).
    pub(crate) fn wake_unless_notified(&self, workflow: Uuid) {
        if !self.listening.load(Ordering::Acquire) {
            self.wake(workflow);
        }
    }

    /// Records whether the wake-up listener is connected.
    pub(crate) fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Release);
    }

    /// Tells the workflow's runner its lease was released elsewhere (a
    /// standby may take it now).
    pub(crate) fn wake_for_lease(&self, workflow: Uuid) {
        self.signal(workflow, LEASE);
    }

    /// Tells every standing-by runner to look at its lease again (lease
    /// notifications may have been missed).
    pub(crate) fn wake_all_for_leases(&self) {
        self.signal_all(LEASE);
    }

    /// Sends `signal` to the workflow's live runner, if any.
    fn signal(&self, workflow: Uuid, signal: u8) {
        if let Some(live) = self.lock().get(&workflow).and_then(|s| s.live.as_ref()) {
            live.signals.send(signal);
        }
    }

    /// Sends `signal` to every live runner.
    fn signal_all(&self, signal: u8) {
        for live in self.lock().values().filter_map(|slot| slot.live.as_ref()) {
            live.signals.send(signal);
        }
    }

    /// Whether this replica's runner of the workflow stands by (another
    /// replica holds its lease). Only the holder acts on the workflow's
    /// task events, so a standby costs the active replica nothing.
    pub(crate) fn is_standby(&self, workflow: Uuid) -> bool {
        self.lock()
            .get(&workflow)
            .is_some_and(|slot| slot.info.state == RunnerState::Standby)
    }

    /// Marks the given workflows' runners stalled (with the reason), and
    /// clears the mark of every other one.
    pub(crate) fn set_stalls(&self, mut stalls: HashMap<Uuid, String>) {
        for (workflow, slot) in self.lock().iter_mut() {
            slot.stall = stalls.remove(workflow);
        }
    }

    /// Workflows with a live runner.
    pub(crate) fn live_workflows(&self) -> Vec<Uuid> {
        self.lock()
            .iter()
            .filter(|(_, slot)| slot.live.as_ref().is_some_and(|live| self.is_live(live)))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Workflows by runner state (for the runners gauge).
    pub(crate) fn count_by_state(&self) -> Vec<(&'static str, u64)> {
        let mut counts = [0u64; 5];
        let epoch = self.ctx.membership.lease_epoch();
        for slot in self.lock().values() {
            let index = match Self::shown(slot, epoch).state {
                RunnerState::WaitingForAgent => 0,
                RunnerState::Running => 1,
                RunnerState::Stopped => 2,
                RunnerState::Standby => 3,
                RunnerState::Stalled => 4,
            };
            counts[index] += 1;
        }
        vec![
            ("waiting_for_agent", counts[0]),
            ("running", counts[1]),
            ("stopped", counts[2]),
            ("standby", counts[3]),
            ("stalled", counts[4]),
        ]
    }

    /// This replica's name as a lease owner.
    pub(crate) fn replica(&self) -> &str {
        &self.ctx.replica
    }

    pub(crate) fn info(&self, workflow: Uuid) -> Option<RunnerInfo> {
        let epoch = self.ctx.membership.lease_epoch();
        self.lock()
            .get(&workflow)
            .map(|slot| Self::shown(slot, epoch))
    }

    /// What a slot shows: a running runner behind a stuck task is STALLED;
    /// a runner that said it runs under another membership `epoch` than
    /// the current one (None: lapsed; a stopped process just continued, a
    /// lost session lock) does not show RUNNING: its lease may be another's
    /// already, and its claims take nothing until it holds one again.
    fn shown(slot: &Slot, epoch: Option<u64>) -> RunnerInfo {
        if epoch != Some(slot.running_epoch)
            && matches!(slot.info.state, RunnerState::Running | RunnerState::Stalled)
        {
            return RunnerInfo {
                state: RunnerState::Standby,
                reason: "this replica's membership lapsed; its lease may be another's".into(),
                ..slot.info.clone()
            };
        }
        match &slot.stall {
            Some(reason) if slot.info.state == RunnerState::Running => RunnerInfo {
                state: RunnerState::Stalled,
                reason: reason.clone(),
                ..slot.info.clone()
            },
            _ => slot.info.clone(),
        }
    }

    /// Cancels every runner and waits for them to finish.
    pub(crate) async fn shutdown(&self) {
        self.shutdown.cancel();
        let tasks: Vec<JoinHandle<()>> = self
            .lock()
            .values_mut()
            .filter_map(|slot| slot.live.take())
            .map(|live| {
                live.signals.stop();
                live.task
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    fn is_live(&self, live: &Live) -> bool {
        let progress = live.signals.progress.load(Ordering::Relaxed);
        let idle = self.now_ms().saturating_sub(progress);
        !live.task.is_finished()
            && (progress == RESTING || Duration::from_millis(idle) < WEDGE_TIMEOUT)
    }

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records a runner's state, if it still owns its slot.
    pub(super) fn report(&self, workflow: Uuid, runner: u64, state: RunnerState, reason: &str) {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(&workflow) else {
            return;
        };
        if slot.live.as_ref().is_none_or(|live| live.id != runner) {
            return;
        }
        if state == RunnerState::Stopped {
            // The slot is free the moment the runner ends, for any reason.
            slot.live = None;
        }
        if matches!(state, RunnerState::Running | RunnerState::Stalled) {
            slot.running_epoch = self.ctx.membership.lease_epoch().unwrap_or(u64::MAX);
        }
        if slot.info.state != state || slot.info.reason != reason {
            slot.info.state = state;
            slot.info.reason = reason.to_owned();
            slot.info.since = SystemTime::now();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Forwards membership changes to every runner until shutdown, or until
/// the registry is gone.
async fn forward_placement(
    runners: std::sync::Weak<Runners>,
    mut placement: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = placement.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        match runners.upgrade() {
            Some(runners) => runners.signal_all(PLACEMENT),
            None => return,
        }
    }
}
