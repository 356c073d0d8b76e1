//! The supervisor's decisions, as one pure function: given what it knows of
//! its agent (`State`) and what just happened (`Input`), what to do, in
//! order (`Effect`s). The actor (`actor.rs`) gathers the state, calls
//! `decide` and carries the effects out, stopping at the first that fails;
//! it decides nothing itself. So every transition — stop, restart, delete,
//! the restart budget and its backoff, the reconnect window, a wedged
//! agent, an OOM kill — is tested here without a process or a database.

use std::collections::VecDeque;

use tokio::time::Instant;
use uuid::Uuid;

use crate::model::{AgentStatus, DesiredState, ExitInfo, RestartMode, RestartPolicy, Runtime};

/// What the supervisor knows of its agent when an input arrives.
#[derive(Debug, Clone)]
pub(crate) struct State<'a> {
    pub runtime: Runtime,
    pub desired: DesiredState,
    /// The status as last stored.
    pub status: AgentStatus,
    /// A pid is recorded for the agent.
    pub has_pid: bool,
    /// A process (or Pod) this node launched or adopted runs.
    pub running: bool,
    /// A session of the agent is installed.
    pub connected: bool,
    pub policy: &'a RestartPolicy,
    /// When automatic restarts happened, oldest first (the budget).
    pub restarts: &'a VecDeque<Instant>,
}

/// What happened.
#[derive(Debug, Clone)]
pub(crate) enum Input<'a> {
    Start,
    Stop,
    Restart {
        reason: &'a str,
    },
    Delete,
    /// A session's loop ended; `current`: it was the installed one.
    SessionClosed {
        session_id: Uuid,
        current: bool,
        /// The agent ignored a Cancel.
        wedged: bool,
        reason: &'a str,
    },
    /// The process ended on its own.
    Exited {
        exit: ExitInfo,
        now: Instant,
    },
    /// The backoff before an automatic restart is over.
    BackoffElapsed,
    /// The process did not come back on a new session in time.
    ReconnectWindowClosed,
    /// The manager goes away.
    Shutdown {
        live_restore: bool,
    },
    /// This node's lease had lapsed; `stored_lost`: peers declared the
    /// agent LOST meanwhile.
    LeaseRegained {
        stored_lost: bool,
    },
    /// Manager start-up, once adoption (`adopts`) was not possible:
    /// `orphan_started_at` is the start time recorded with the pid a
    /// previous manager left.
    Reconcile {
        orphan_started_at: Option<i64>,
    },
}

/// Whether the stored pid is left as it is or cleared by a status write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pid {
    Keep,
    Clear,
}

/// The events decisions append themselves (launches and exits append
/// theirs as they happen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    Ready,
    Stopped,
    Disconnected { reason: String },
}

/// One step for the actor to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    SetDesired(DesiredState),
    /// Forget the pending automatic restart.
    CancelBackoff,
    /// A fresh budget: no pending restart, no restarts counted.
    ResetRestartBudget,
    /// The restarts the budget counts from now on.
    KeepRestarts(VecDeque<Instant>),
    /// Restart automatically at this instant.
    BackoffUntil(Instant),
    /// Ask an external agent over its session to exit (its session takes
    /// no more tasks).
    AskToExit(String),
    /// Stop the running process and record its exit.
    Terminate(String),
    /// Kill what is left of an exited process's tree and forget its token.
    ClearProcess,
    /// Record how the process ended (row and `Exited` event).
    RecordExit(ExitInfo),
    /// End the current session from this side; every task in flight is lost.
    DropSession(String),
    /// The one launch path: the next generation.
    Launch(String),
    /// Store the status, and the event that tells of it if there is one,
    /// in one transaction.
    SetStatus {
        status: AgentStatus,
        message: String,
        pid: Pid,
        event: Option<Entry>,
    },
    /// An event without a status change.
    Append(Entry),
    /// Tasks in flight on this ended session are lost.
    SweepSession(Uuid, String),
    /// Every task in flight of the agent is lost.
    SweepAgent(String),
    /// The running process may come back on a new session: open its window.
    ExpectReconnect,
    CloseReconnectWindow,
    /// The process keeps running for the next manager.
    LeaveRunning,
    /// The row goes, and the `Deleted` event is stored, in one transaction.
    DeleteRow,
    RemoveLogs,
    /// Manager start-up: nothing an earlier manager started for the agent
    /// may still run (its runtime knows what that is: the recorded process
    /// if it is still ours and the rest of its tree, or the Pods of earlier
    /// generations). `started_at`: the start time recorded with its pid.
    ClearLeftovers {
        started_at: Option<i64>,
    },
}

use Effect::*;

/// What to do about `input` in `state`.
pub(crate) fn decide(state: &State<'_>, input: Input<'_>) -> Vec<Effect> {
    match input {
        Input::Start => start(state),
        Input::Stop => stop(state),
        Input::Restart { reason } => restart(state, reason),
        Input::Delete => delete(state),
        Input::SessionClosed {
            session_id,
            current,
            wedged,
            reason,
        } => session_closed(state, session_id, current, wedged, reason),
        Input::Exited { exit, now } => exited(state, exit, now),
        Input::BackoffElapsed => vec![CancelBackoff, Launch("restart policy".into())],
        Input::ReconnectWindowClosed => reconnect_window_closed(state),
        Input::Shutdown { live_restore } => shutdown(state, live_restore),
        Input::LeaseRegained { stored_lost } => lease_regained(state, stored_lost),
        Input::Reconcile { orphan_started_at } => reconcile(state, orphan_started_at),
    }
}

/// Manager start-up: whether to try adopting the process a previous manager
/// left running (live restore on, the agent should run, and it is a
/// process of this node's).
pub(crate) fn adopts(state: &State<'_>, live_restore: bool) -> bool {
    live_restore && state.runtime == Runtime::Process && state.desired == DesiredState::Running
}

/// Manager start-up: whether the agent's tasks stay in flight while it is
/// expected back (an external agent that should run reconnects by itself).
pub(crate) fn awaits_reconnect(state: &State<'_>) -> bool {
    external(state) && state.desired == DesiredState::Running
}

fn external(state: &State<'_>) -> bool {
    state.runtime == Runtime::External
}

fn start(state: &State<'_>) -> Vec<Effect> {
    let mut effects = vec![SetDesired(DesiredState::Running)];
    if external(state) {
        // Nothing to launch: it may connect now.
        if !state.connected {
            effects.push(status(
                AgentStatus::Starting,
                "waiting for the external agent to connect",
                Pid::Clear,
            ));
        }
    } else if !state.running {
        effects.extend([ResetRestartBudget, Launch("started on request".into())]);
    }
    // Already running: a quiet no-op.
    effects
}

fn stop(state: &State<'_>) -> Vec<Effect> {
    let mut effects = vec![SetDesired(DesiredState::Stopped), CancelBackoff];
    effects.extend(end_process(state, "agent stopped"));
    // A terminated process leaves the row EXITED.
    if state.running || state.status != AgentStatus::Stopped {
        effects.push(status_with(
            AgentStatus::Stopped,
            "stopped on request",
            Pid::Clear,
            Entry::Stopped,
        ));
    }
    effects
}

fn restart(state: &State<'_>, reason: &str) -> Vec<Effect> {
    let mut effects = vec![SetDesired(DesiredState::Running)];
    if external(state) {
        // Its own supervisor brings it back; the new instance's session is
        // the restart (generation + 1, AgentRestarted).
        effects.push(AskToExit(reason.into()));
        return effects;
    }
    if state.running {
        effects.push(Terminate("agent restarting".into()));
    }
    effects.extend([ResetRestartBudget, Launch(reason.into())]);
    effects
}

fn delete(state: &State<'_>) -> Vec<Effect> {
    let mut effects = vec![CancelBackoff];
    effects.extend(end_process(state, "agent deleted"));
    effects.extend([DeleteRow, RemoveLogs]);
    effects
}

/// Ends what runs of the agent: an external agent is asked to exit, a
/// process of ours is terminated.
fn end_process(state: &State<'_>, reason: &str) -> Vec<Effect> {
    if external(state) {
        vec![AskToExit(reason.into())]
    } else if state.running {
        vec![Terminate(reason.into())]
    } else {
        Vec::new()
    }
}

fn session_closed(
    state: &State<'_>,
    session_id: Uuid,
    current: bool,
    wedged: bool,
    reason: &str,
) -> Vec<Effect> {
    // An external agent is not ours to watch: it may come back (or a new
    // instance may) as long as it should run.
    let may_return = state.running || (external(state) && state.desired == DesiredState::Running);
    let mut effects = Vec::new();
    if !current || wedged || !may_return {
        effects.push(SweepSession(session_id, reason.into()));
    } else {
        // The process still runs and may come back naming the tasks it
        // holds; until then (or the window closes) they stay in flight.
        effects.push(ExpectReconnect);
    }
    if !current {
        return effects;
    }
    if wedged && state.running {
        // A wedged agent cannot be trusted with more work: replace it
        // (through the one restart path, so the scheduler hears
        // AgentRestarted), unless its policy says never.
        if state.policy.mode == RestartMode::Never {
            effects.push(Terminate(reason.into()));
        } else {
            effects.extend(restart(state, reason));
        }
        return effects;
    }
    let disconnected = Entry::Disconnected {
        reason: reason.into(),
    };
    if may_return {
        // It may reconnect with its token.
        effects.push(status_with(
            AgentStatus::Starting,
            reason,
            Pid::Keep,
            disconnected,
        ));
    } else {
        effects.push(Append(disconnected));
    }
    effects
}

/// The process exited on its own: record it, close its session, and apply
/// the restart policy within its budget.
fn exited(state: &State<'_>, exit: ExitInfo, now: Instant) -> Vec<Effect> {
    // Nothing of the old tree may run once its tasks are reported lost (a
    // retry would run beside its predecessor) or a new generation starts.
    let mut effects = vec![
        ClearProcess,
        RecordExit(exit),
        DropSession(format!("process {exit}")),
    ];
    let policy = state.policy;
    if state.desired != DesiredState::Running || !policy.restarts_after(exit.success()) {
        return effects;
    }
    let mut recent: VecDeque<Instant> = state
        .restarts
        .iter()
        .copied()
        .filter(|at| now.saturating_duration_since(*at) <= policy.window)
        .collect();
    if recent.len() >= policy.max_restarts as usize {
        let message = format!(
            "{exit}; restarted {} times within {:?}, giving up (RestartAgent or StartAgent tries again)",
            recent.len(),
            policy.window
        );
        effects.push(KeepRestarts(recent));
        effects.push(status(AgentStatus::Failed, &message, Pid::Clear));
        return effects;
    }
    recent.push_back(now);
    let backoff = policy.backoff(recent.len() as u32);
    effects.push(KeepRestarts(recent));
    effects.push(BackoffUntil(now + backoff));
    effects.push(status(
        AgentStatus::Exited,
        &format!("{exit}; restarting in {backoff:?}"),
        Pid::Clear,
    ));
    effects
}

/// What the process held is lost (it may still reconnect later; its
/// reports are then recorded by attempt).
fn reconnect_window_closed(state: &State<'_>) -> Vec<Effect> {
    let mut effects = vec![CloseReconnectWindow];
    if !state.connected {
        effects.push(SweepAgent("the agent did not reconnect in time".into()));
    }
    effects
}

fn shutdown(state: &State<'_>, live_restore: bool) -> Vec<Effect> {
    if !state.running {
        Vec::new()
    } else if live_restore {
        vec![LeaveRunning]
    } else {
        vec![
            Terminate("manager shutting down".into()),
            status(AgentStatus::Exited, "manager shut down", Pid::Clear),
        ]
    }
}

/// Peers may have declared the agent LOST while this node's lease had
/// lapsed: show it as it is.
fn lease_regained(state: &State<'_>, stored_lost: bool) -> Vec<Effect> {
    if !stored_lost {
        Vec::new()
    } else if state.connected {
        vec![status_with(AgentStatus::Ready, "", Pid::Keep, Entry::Ready)]
    } else if state.running || external(state) {
        vec![status(
            AgentStatus::Starting,
            "its manager node is back; waiting for its session",
            Pid::Keep,
        )]
    } else {
        Vec::new()
    }
}

/// Manager start-up, nothing adopted: bring the agent to its desired state
/// through the one launch path, after clearing what earlier managers left.
fn reconcile(state: &State<'_>, orphan_started_at: Option<i64>) -> Vec<Effect> {
    let mut effects = match state.runtime {
        Runtime::External => {
            // It reconnects by itself; until it does (or its window closes)
            // its tasks count as in flight.
            if !awaits_reconnect(state) {
                return Vec::new();
            }
            return vec![
                ExpectReconnect,
                status(
                    AgentStatus::Starting,
                    "waiting for the external agent to reconnect",
                    Pid::Clear,
                ),
            ];
        }
        Runtime::Process | Runtime::Kubernetes => vec![ClearLeftovers {
            started_at: orphan_started_at,
        }],
    };
    let leftover = match state.runtime {
        Runtime::Process => {
            state.has_pid
                || state.status == AgentStatus::Ready
                || state.status == AgentStatus::Starting
        }
        _ => state.status != AgentStatus::Stopped,
    };
    match state.desired {
        DesiredState::Running => effects.push(Launch("manager start-up reconciliation".into())),
        DesiredState::Stopped if leftover => {
            effects.push(status(AgentStatus::Stopped, "", Pid::Clear))
        }
        DesiredState::Stopped => {}
    }
    effects
}

fn status(status: AgentStatus, message: &str, pid: Pid) -> Effect {
    SetStatus {
        status,
        message: message.into(),
        pid,
        event: None,
    }
}

/// A status and the event that tells of it, committed together.
fn status_with(status: AgentStatus, message: &str, pid: Pid, event: Entry) -> Effect {
    SetStatus {
        status,
        message: message.into(),
        pid,
        event: Some(event),
    }
}

#[cfg(test)]
mod tests;
