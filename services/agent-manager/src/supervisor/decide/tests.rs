//! Every transition of the supervisor, without a process or a database.

use super::*;
use std::time::Duration;

/// An agent as its fields say; `running` and `connected` start true for a
/// process agent that is READY.
struct Agent {
    runtime: Runtime,
    desired: DesiredState,
    status: AgentStatus,
    has_pid: bool,
    running: bool,
    connected: bool,
    policy: RestartPolicy,
    restarts: VecDeque<Instant>,
}

impl Agent {
    fn ready() -> Self {
        Self {
            runtime: Runtime::Process,
            desired: DesiredState::Running,
            status: AgentStatus::Ready,
            has_pid: true,
            running: true,
            connected: true,
            policy: RestartPolicy::default(),
            restarts: VecDeque::new(),
        }
    }

    fn stopped() -> Self {
        Self {
            desired: DesiredState::Stopped,
            status: AgentStatus::Stopped,
            has_pid: false,
            running: false,
            connected: false,
            ..Self::ready()
        }
    }

    fn external() -> Self {
        Self {
            runtime: Runtime::External,
            has_pid: false,
            running: false,
            ..Self::ready()
        }
    }

    fn pod() -> Self {
        Self {
            runtime: Runtime::Kubernetes,
            ..Self::ready()
        }
    }

    fn state(&self) -> State<'_> {
        State {
            runtime: self.runtime,
            desired: self.desired,
            status: self.status,
            has_pid: self.has_pid,
            running: self.running,
            connected: self.connected,
            policy: &self.policy,
            restarts: &self.restarts,
        }
    }

    fn decide(&self, input: Input<'_>) -> Vec<Effect> {
        decide(&self.state(), input)
    }
}

fn status(status: AgentStatus, message: &str, pid: Pid) -> Effect {
    super::status(status, message, pid)
}

fn status_with(status: AgentStatus, message: &str, pid: Pid, event: Entry) -> Effect {
    super::status_with(status, message, pid, event)
}

const CRASH: ExitInfo = ExitInfo {
    code: Some(1),
    signal: None,
    oom_killed: false,
};

const CLEAN: ExitInfo = ExitInfo {
    code: Some(0),
    signal: None,
    oom_killed: false,
};

const OOM: ExitInfo = ExitInfo {
    code: None,
    signal: Some(9),
    oom_killed: true,
};

fn exit_effects(exit: ExitInfo) -> Vec<Effect> {
    vec![
        ClearProcess,
        RecordExit(exit),
        DropSession(format!("process {exit}")),
    ]
}

// --- start ---

#[test]
fn start_launches_a_stopped_agent_with_a_fresh_budget() {
    assert_eq!(
        Agent::stopped().decide(Input::Start),
        vec![
            SetDesired(DesiredState::Running),
            ResetRestartBudget,
            Launch("started on request".into()),
        ]
    );
}

#[test]
fn start_of_a_running_agent_is_a_quiet_no_op() {
    assert_eq!(
        Agent::ready().decide(Input::Start),
        vec![SetDesired(DesiredState::Running)]
    );
}

#[test]
fn start_of_an_external_agent_launches_nothing_and_waits_for_it() {
    let mut agent = Agent::external();
    agent.connected = false;
    assert_eq!(
        agent.decide(Input::Start),
        vec![
            SetDesired(DesiredState::Running),
            status(
                AgentStatus::Starting,
                "waiting for the external agent to connect",
                Pid::Clear
            ),
        ]
    );
    agent.connected = true;
    assert_eq!(
        agent.decide(Input::Start),
        vec![SetDesired(DesiredState::Running)]
    );
}

// --- stop ---

#[test]
fn stop_terminates_the_process_and_records_stopped() {
    assert_eq!(
        Agent::ready().decide(Input::Stop),
        vec![
            SetDesired(DesiredState::Stopped),
            CancelBackoff,
            Terminate("agent stopped".into()),
            status_with(
                AgentStatus::Stopped,
                "stopped on request",
                Pid::Clear,
                Entry::Stopped
            ),
        ]
    );
}

#[test]
fn stop_during_backoff_cancels_the_pending_restart() {
    let mut agent = Agent::ready();
    agent.running = false;
    agent.status = AgentStatus::Exited;
    assert_eq!(
        agent.decide(Input::Stop),
        vec![
            SetDesired(DesiredState::Stopped),
            CancelBackoff,
            status_with(
                AgentStatus::Stopped,
                "stopped on request",
                Pid::Clear,
                Entry::Stopped
            ),
        ]
    );
}

#[test]
fn stop_of_a_stopped_agent_writes_no_status_or_event() {
    assert_eq!(
        Agent::stopped().decide(Input::Stop),
        vec![SetDesired(DesiredState::Stopped), CancelBackoff]
    );
}

#[test]
fn stop_of_an_external_agent_asks_it_to_exit() {
    assert_eq!(
        Agent::external().decide(Input::Stop),
        vec![
            SetDesired(DesiredState::Stopped),
            CancelBackoff,
            AskToExit("agent stopped".into()),
            status_with(
                AgentStatus::Stopped,
                "stopped on request",
                Pid::Clear,
                Entry::Stopped
            ),
        ]
    );
}

// --- restart ---

#[test]
fn restart_terminates_then_launches_the_next_generation() {
    assert_eq!(
        Agent::ready().decide(Input::Restart { reason: "deploy" }),
        vec![
            SetDesired(DesiredState::Running),
            Terminate("agent restarting".into()),
            ResetRestartBudget,
            Launch("deploy".into()),
        ]
    );
}

#[test]
fn restart_of_a_stopped_agent_launches_it() {
    assert_eq!(
        Agent::stopped().decide(Input::Restart { reason: "deploy" }),
        vec![
            SetDesired(DesiredState::Running),
            ResetRestartBudget,
            Launch("deploy".into()),
        ]
    );
}

#[test]
fn restart_of_an_external_agent_asks_it_to_exit_and_launches_nothing() {
    assert_eq!(
        Agent::external().decide(Input::Restart { reason: "deploy" }),
        vec![
            SetDesired(DesiredState::Running),
            AskToExit("deploy".into())
        ]
    );
}

// --- delete ---

#[test]
fn delete_terminates_then_removes_the_row_and_logs() {
    assert_eq!(
        Agent::ready().decide(Input::Delete),
        vec![
            CancelBackoff,
            Terminate("agent deleted".into()),
            DeleteRow,
            RemoveLogs,
        ]
    );
    assert_eq!(
        Agent::stopped().decide(Input::Delete),
        vec![CancelBackoff, DeleteRow, RemoveLogs]
    );
    assert_eq!(
        Agent::external().decide(Input::Delete),
        vec![
            CancelBackoff,
            AskToExit("agent deleted".into()),
            DeleteRow,
            RemoveLogs,
        ]
    );
}

// --- sessions ---

fn closed(current: bool, wedged: bool) -> Input<'static> {
    Input::SessionClosed {
        session_id: Uuid::nil(),
        current,
        wedged,
        reason: "stream ended",
    }
}

#[test]
fn a_dropped_session_of_a_running_process_opens_its_reconnect_window() {
    assert_eq!(
        Agent::ready().decide(closed(true, false)),
        vec![
            ExpectReconnect,
            status_with(
                AgentStatus::Starting,
                "stream ended",
                Pid::Keep,
                Entry::Disconnected {
                    reason: "stream ended".into()
                }
            ),
        ]
    );
}

#[test]
fn a_replaced_session_only_loses_its_own_tasks() {
    assert_eq!(
        Agent::ready().decide(closed(false, false)),
        vec![SweepSession(Uuid::nil(), "stream ended".into())]
    );
}

#[test]
fn a_session_whose_process_is_gone_loses_its_tasks_and_says_disconnected() {
    let mut agent = Agent::ready();
    agent.running = false;
    assert_eq!(
        agent.decide(closed(true, false)),
        vec![
            SweepSession(Uuid::nil(), "stream ended".into()),
            Append(Entry::Disconnected {
                reason: "stream ended".into()
            }),
        ]
    );
}

#[test]
fn an_external_agent_that_should_run_may_come_back() {
    assert_eq!(
        Agent::external().decide(closed(true, false)),
        vec![
            ExpectReconnect,
            status_with(
                AgentStatus::Starting,
                "stream ended",
                Pid::Keep,
                Entry::Disconnected {
                    reason: "stream ended".into()
                }
            ),
        ]
    );
    let mut stopped = Agent::external();
    stopped.desired = DesiredState::Stopped;
    assert_eq!(
        stopped.decide(closed(true, false)),
        vec![
            SweepSession(Uuid::nil(), "stream ended".into()),
            Append(Entry::Disconnected {
                reason: "stream ended".into()
            }),
        ]
    );
}

#[test]
fn a_wedged_agent_is_replaced_through_the_restart_path() {
    assert_eq!(
        Agent::ready().decide(closed(true, true)),
        vec![
            SweepSession(Uuid::nil(), "stream ended".into()),
            SetDesired(DesiredState::Running),
            Terminate("agent restarting".into()),
            ResetRestartBudget,
            Launch("stream ended".into()),
        ]
    );
}

#[test]
fn a_wedged_agent_whose_policy_says_never_is_only_terminated() {
    let mut agent = Agent::ready();
    agent.policy.mode = RestartMode::Never;
    assert_eq!(
        agent.decide(closed(true, true)),
        vec![
            SweepSession(Uuid::nil(), "stream ended".into()),
            Terminate("stream ended".into()),
        ]
    );
}

#[test]
fn the_reconnect_window_closing_loses_the_tasks_unless_it_came_back() {
    let mut agent = Agent::ready();
    agent.connected = false;
    assert_eq!(
        agent.decide(Input::ReconnectWindowClosed),
        vec![
            CloseReconnectWindow,
            SweepAgent("the agent did not reconnect in time".into()),
        ]
    );
    agent.connected = true;
    assert_eq!(
        agent.decide(Input::ReconnectWindowClosed),
        vec![CloseReconnectWindow]
    );
}

// --- exits and the restart budget ---

#[test]
fn a_crash_restarts_after_the_initial_backoff() {
    let agent = Agent::ready();
    let now = Instant::now();
    let mut effects = exit_effects(CRASH);
    effects.extend([
        KeepRestarts(VecDeque::from([now])),
        BackoffUntil(now + Duration::from_secs(1)),
        status(
            AgentStatus::Exited,
            "exited with code 1; restarting in 1s",
            Pid::Clear,
        ),
    ]);
    assert_eq!(agent.decide(Input::Exited { exit: CRASH, now }), effects);
}

#[test]
fn backoff_doubles_with_each_restart_in_the_window() {
    let mut agent = Agent::ready();
    let now = Instant::now();
    agent.restarts = VecDeque::from([now, now]);
    let effects = agent.decide(Input::Exited { exit: CRASH, now });
    assert!(effects.contains(&BackoffUntil(now + Duration::from_secs(4))));
    assert!(effects.contains(&KeepRestarts(VecDeque::from([now, now, now]))));
}

#[test]
fn the_budget_spent_within_the_window_gives_up_as_failed() {
    let mut agent = Agent::ready();
    agent.policy.max_restarts = 2;
    let now = Instant::now();
    agent.restarts = VecDeque::from([now, now]);
    let mut effects = exit_effects(CRASH);
    effects.extend([
        KeepRestarts(VecDeque::from([now, now])),
        status(
            AgentStatus::Failed,
            "exited with code 1; restarted 2 times within 60s, giving up (RestartAgent or StartAgent tries again)",
            Pid::Clear,
        ),
    ]);
    assert_eq!(agent.decide(Input::Exited { exit: CRASH, now }), effects);
}

#[test]
fn restarts_older_than_the_window_no_longer_count() {
    let mut agent = Agent::ready();
    agent.policy.max_restarts = 2;
    let long_ago = Instant::now();
    let now = long_ago + agent.policy.window + Duration::from_millis(1);
    agent.restarts = VecDeque::from([long_ago, long_ago]);
    let effects = agent.decide(Input::Exited { exit: CRASH, now });
    assert!(effects.contains(&KeepRestarts(VecDeque::from([now]))));
    assert!(effects.contains(&BackoffUntil(now + Duration::from_secs(1))));
}

#[test]
fn a_clean_exit_is_not_restarted_on_failure_only() {
    let now = Instant::now();
    assert_eq!(
        Agent::ready().decide(Input::Exited { exit: CLEAN, now }),
        exit_effects(CLEAN)
    );
    let mut always = Agent::ready();
    always.policy.mode = RestartMode::Always;
    assert!(
        always
            .decide(Input::Exited { exit: CLEAN, now })
            .contains(&BackoffUntil(now + Duration::from_secs(1)))
    );
}

#[test]
fn an_oom_kill_is_a_failure_and_restarts() {
    let now = Instant::now();
    let effects = Agent::ready().decide(Input::Exited { exit: OOM, now });
    assert_eq!(effects[..3], exit_effects(OOM)[..]);
    assert!(effects.contains(&BackoffUntil(now + Duration::from_secs(1))));
}

#[test]
fn a_crash_is_never_restarted_under_policy_never_or_when_stopped() {
    let now = Instant::now();
    let mut never = Agent::ready();
    never.policy.mode = RestartMode::Never;
    assert_eq!(
        never.decide(Input::Exited { exit: CRASH, now }),
        exit_effects(CRASH)
    );
    let mut stopping = Agent::ready();
    stopping.desired = DesiredState::Stopped;
    assert_eq!(
        stopping.decide(Input::Exited { exit: CRASH, now }),
        exit_effects(CRASH)
    );
}

#[test]
fn the_backoff_elapsing_launches_through_the_one_path() {
    assert_eq!(
        Agent::stopped().decide(Input::BackoffElapsed),
        vec![CancelBackoff, Launch("restart policy".into())]
    );
}

// --- shutdown and lease ---

#[test]
fn shutdown_leaves_processes_running_under_live_restore() {
    let agent = Agent::ready();
    assert_eq!(
        agent.decide(Input::Shutdown { live_restore: true }),
        vec![LeaveRunning]
    );
    assert_eq!(
        agent.decide(Input::Shutdown {
            live_restore: false
        }),
        vec![
            Terminate("manager shutting down".into()),
            status(AgentStatus::Exited, "manager shut down", Pid::Clear),
        ]
    );
    assert!(
        Agent::stopped()
            .decide(Input::Shutdown {
                live_restore: false
            })
            .is_empty()
    );
}

#[test]
fn a_regained_lease_shows_a_lost_agent_as_it_is() {
    let ready = Agent::ready();
    assert!(
        ready
            .decide(Input::LeaseRegained { stored_lost: false })
            .is_empty()
    );
    assert_eq!(
        ready.decide(Input::LeaseRegained { stored_lost: true }),
        vec![status_with(AgentStatus::Ready, "", Pid::Keep, Entry::Ready)]
    );
    let mut waiting = Agent::ready();
    waiting.connected = false;
    assert_eq!(
        waiting.decide(Input::LeaseRegained { stored_lost: true }),
        vec![status(
            AgentStatus::Starting,
            "its manager node is back; waiting for its session",
            Pid::Keep
        )]
    );
    assert!(
        Agent::stopped()
            .decide(Input::LeaseRegained { stored_lost: true })
            .is_empty()
    );
}

// --- start-up reconciliation ---

#[test]
fn adoption_is_tried_only_for_a_process_that_should_run_under_live_restore() {
    assert!(adopts(&Agent::ready().state(), true));
    assert!(!adopts(&Agent::ready().state(), false));
    assert!(!adopts(&Agent::stopped().state(), true));
    assert!(!adopts(&Agent::external().state(), true));
    assert!(!adopts(&Agent::pod().state(), true));
}

#[test]
fn reconcile_clears_leftovers_then_launches_an_agent_that_should_run() {
    let mut agent = Agent::ready();
    agent.running = false;
    assert_eq!(
        agent.decide(Input::Reconcile {
            orphan_started_at: Some(42)
        }),
        vec![
            ClearLeftovers {
                started_at: Some(42)
            },
            Launch("manager start-up reconciliation".into()),
        ]
    );
}

#[test]
fn reconcile_of_a_stopped_agent_records_stopped_only_if_it_looked_alive() {
    let mut agent = Agent::stopped();
    agent.status = AgentStatus::Ready;
    let cleared = vec![ClearLeftovers { started_at: None }];
    let mut stopped = cleared.clone();
    stopped.push(status(AgentStatus::Stopped, "", Pid::Clear));
    assert_eq!(
        agent.decide(Input::Reconcile {
            orphan_started_at: None
        }),
        stopped
    );
    agent.status = AgentStatus::Failed;
    assert_eq!(
        agent.decide(Input::Reconcile {
            orphan_started_at: None
        }),
        cleared
    );
}

#[test]
fn reconcile_of_a_pod_agent_clears_old_pods_first() {
    let mut pod = Agent::pod();
    pod.running = false;
    assert_eq!(
        pod.decide(Input::Reconcile {
            orphan_started_at: None
        }),
        vec![
            ClearLeftovers { started_at: None },
            Launch("manager start-up reconciliation".into())
        ]
    );
    pod.desired = DesiredState::Stopped;
    pod.status = AgentStatus::Exited;
    assert_eq!(
        pod.decide(Input::Reconcile {
            orphan_started_at: None
        }),
        vec![
            ClearLeftovers { started_at: None },
            status(AgentStatus::Stopped, "", Pid::Clear)
        ]
    );
}

#[test]
fn reconcile_of_an_external_agent_waits_for_it_to_reconnect() {
    let agent = Agent::external();
    assert!(awaits_reconnect(&agent.state()));
    assert_eq!(
        agent.decide(Input::Reconcile {
            orphan_started_at: None
        }),
        vec![
            ExpectReconnect,
            status(
                AgentStatus::Starting,
                "waiting for the external agent to reconnect",
                Pid::Clear
            ),
        ]
    );
    let mut stopped = Agent::external();
    stopped.desired = DesiredState::Stopped;
    assert!(!awaits_reconnect(&stopped.state()));
    assert!(
        stopped
            .decide(Input::Reconcile {
                orphan_started_at: None
            })
            .is_empty()
    );
}
