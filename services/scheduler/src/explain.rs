//! "Why isn't it running?": a workflow's diagnosis from what decides
//! whether its tasks run, checked in order of how decisive each is, and a
//! one-line verdict a person can act on. Pure: the service gathers the
//! facts, this module judges them.

use std::time::{Duration, SystemTime};

use crate::model::RunnerState;

/// The agent as the manager reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentFacts {
    /// "ready", "starting", "exited", "failed", "stopped", "lost", ... or
    /// "unknown" when the manager could not be asked.
    pub status: String,
    pub message: String,
    pub desired_running: bool,
    pub generation: u64,
    pub since: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InFlightFacts {
    pub task_id: String,
    pub attempt: u32,
    pub age: Duration,
}

/// An approval a task of the workflow waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApprovalFacts {
    pub approval_id: String,
    pub task_id: String,
    pub tool: String,
    pub age: Duration,
}

/// A concurrency key the workflow names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeyFacts {
    pub name: String,
    pub max_running: u32,
    pub running: u32,
    /// Workflows whose dispatched tasks hold it (at most 10).
    pub holders: Vec<String>,
    /// Its rate, if it has one: starts per period, and the tokens its
    /// bucket holds now.
    pub rate: Option<(u32, Duration, f64)>,
}

impl KeyFacts {
    /// How long until its bucket holds a token again; None when it holds
    /// one now, or the key has no rate.
    pub(crate) fn next_start_in(&self) -> Option<Duration> {
        let (starts, period, tokens) = self.rate?;
        (tokens < 1.0 && starts > 0)
            .then(|| period.mul_f64(((1.0 - tokens) / f64::from(starts)).clamp(0.0, 1.0)))
    }
}

/// Everything a diagnosis looks at.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub enabled: bool,
    pub disabled_reason: String,
    pub agent: AgentFacts,
    pub runner_state: RunnerState,
    pub runner_reason: String,
    pub lease_holder: Option<(String, i64)>,
    /// This replica's id.
    pub me: String,
    pub max_concurrency: u32,
    pub in_flight: Vec<InFlightFacts>,
    /// How many are in flight in all (`in_flight` holds at most 20).
    pub in_flight_count: u64,
    pub pending: u64,
    pub due: u64,
    pub oldest_pending: Option<(String, Duration)>,
    pub next_fire: Option<SystemTime>,
    pub last_error: String,
    /// Pending approvals of the workflow's tasks, the oldest first.
    pub approvals: Vec<ApprovalFacts>,
    /// The concurrency keys it names.
    pub keys: Vec<KeyFacts>,
    /// Its pause, if it is paused: by whom, since when, why.
    pub paused: Option<(String, SystemTime, String)>,
    /// Its agent's pause, likewise.
    pub agent_paused: Option<(String, SystemTime, String)>,
    /// A spent budget of it or of its agent: what is spent, and when its
    /// period resets (a calendar period's).
    pub budget_spent: Option<(String, Option<SystemTime>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Running,
    Disabled,
    AgentStopped,
    AgentCrashLooping,
    AgentNotReady,
    LeaseElsewhere,
    WaitingOnApproval,
    ConcurrencyFull,
    WaitingOnKey,
    RateLimited,
    Paused,
    BudgetExhausted,
    NothingDue,
    Stalled,
}

/// ": reason", or nothing for no reason.
fn because(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

/// The verdict and its one line.
pub(crate) fn judge(facts: &Facts) -> (Verdict, String) {
    if !facts.enabled {
        let why = if facts.disabled_reason.is_empty() {
            "disabled".to_owned()
        } else {
            format!("disabled: {}", facts.disabled_reason)
        };
        return (
            Verdict::Disabled,
            format!("{why}; enable it to run its tasks"),
        );
    }
    if let Some((by, since, reason)) = &facts.paused {
        return (
            Verdict::Paused,
            format!(
                "paused by {by} {} ago{}; ResumeWorkflow (`shepherd workflows resume`) runs it again",
                human(age(*since)),
                because(reason)
            ),
        );
    }
    if let Some((by, since, reason)) = &facts.agent_paused {
        return (
            Verdict::Paused,
            format!(
                "its agent is paused by {by} {} ago{}; ResumeAgent (`shepherd agents resume`) dispatches to it again",
                human(age(*since)),
                because(reason)
            ),
        );
    }
    if let Some((summary, resets_at)) = &facts.budget_spent {
        let resets = resets_at
            .map(|at| {
                format!(
                    "; it resets in {}",
                    human(at.duration_since(SystemTime::now()).unwrap_or_default())
                )
            })
            .unwrap_or_default();
        return (
            Verdict::BudgetExhausted,
            format!(
                "{summary}{resets}; approving its approval (`shepherd approvals`) goes on past it"
            ),
        );
    }
    let agent = &facts.agent;
    if agent.status != "ready" {
        return judge_agent(agent);
    }
    if let Some((holder, term)) = &facts.lease_holder
        && *holder != facts.me
        && facts.runner_state == RunnerState::Standby
    {
        return (
            Verdict::LeaseElsewhere,
            format!("scheduler replica {holder} runs it (lease term {term}); ask that replica"),
        );
    }
    if facts.runner_state == RunnerState::Stalled {
        return (
            Verdict::Stalled,
            format!("stalled: {}", facts.runner_reason),
        );
    }
    if let Some(oldest) = facts.approvals.first() {
        return (
            Verdict::WaitingOnApproval,
            format!(
                "waiting on approval: {} pending; the oldest, {} for task {}, for {}: `shepherd approvals approve {}` (or deny)",
                facts.approvals.len(),
                oldest.tool,
                oldest.task_id,
                human(oldest.age),
                oldest.approval_id
            ),
        );
    }
    if facts.in_flight_count >= u64::from(facts.max_concurrency) && facts.due > 0 {
        let oldest = facts
            .in_flight
            .first()
            .map(|task| format!("; the oldest, {}, for {}", task.task_id, human(task.age)))
            .unwrap_or_default();
        return (
            Verdict::ConcurrencyFull,
            format!(
                "concurrency full: {} of {} in flight{oldest}; {} due task(s) wait",
                facts.in_flight_count, facts.max_concurrency, facts.due
            ),
        );
    }
    if facts.due > 0
        && let Some(key) = facts.keys.iter().find(|k| k.running >= k.max_running)
    {
        let holders = match key.holders.as_slice() {
            [] => String::new(),
            names => format!(", held by {}", names.join(", ")),
        };
        return (
            Verdict::WaitingOnKey,
            format!(
                "waiting on key {}: {} of {} running{holders}; {} due task(s) wait for a slot",
                key.name, key.running, key.max_running, facts.due
            ),
        );
    }
    if facts.due > 0
        && let Some((key, wait)) = facts
            .keys
            .iter()
            .find_map(|key| key.next_start_in().map(|wait| (key, wait)))
    {
        let (starts, period, _) = key.rate.unwrap_or_default();
        return (
            Verdict::RateLimited,
            format!(
                "rate limited by key {} ({starts} starts per {}): the next start in {}; {} due task(s) wait",
                key.name,
                human(period),
                human(wait),
                facts.due
            ),
        );
    }
    if facts.due == 0 {
        let waiting = match facts.pending {
            0 => "no task pending".to_owned(),
            n => format!("{n} task(s) pending, none due yet (retry backoff)"),
        };
        let next = match facts.next_fire {
            Some(at) => format!("; next scheduled fire in {}", human(until(at))),
            None => String::new(),
        };
        return (Verdict::NothingDue, format!("nothing due: {waiting}{next}"));
    }
    (
        Verdict::Running,
        format!(
            "running: {} in flight, {} due",
            facts.in_flight_count, facts.due
        ),
    )
}

fn judge_agent(agent: &AgentFacts) -> (Verdict, String) {
    let since = agent
        .since
        .map(|at| format!(" for {}", human(age(at))))
        .unwrap_or_default();
    let message = if agent.message.is_empty() {
        String::new()
    } else {
        format!(": {}", agent.message)
    };
    match agent.status.as_str() {
        "stopped" => (
            Verdict::AgentStopped,
            format!("its agent is stopped{since}; StartAgent runs it again"),
        ),
        "failed" | "exited" if agent.desired_running && agent.generation > 1 => (
            Verdict::AgentCrashLooping,
            format!(
                "its agent is crash-looping (generation {}, {}{since}){message}",
                agent.generation, agent.status
            ),
        ),
        status => (
            Verdict::AgentNotReady,
            format!("its agent is not ready ({status}{since}){message}"),
        ),
    }
}

fn age(at: SystemTime) -> Duration {
    SystemTime::now().duration_since(at).unwrap_or_default()
}

fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now()).unwrap_or_default()
}

/// 5s, 3m, 2h.
fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..90 => format!("{secs}s"),
        90..5400 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Facts {
        Facts {
            enabled: true,
            disabled_reason: String::new(),
            agent: AgentFacts {
                status: "ready".into(),
                message: String::new(),
                desired_running: true,
                generation: 1,
                since: None,
            },
            runner_state: RunnerState::Running,
            runner_reason: String::new(),
            lease_holder: Some(("me".into(), 3)),
            me: "me".into(),
            max_concurrency: 1,
            in_flight: Vec::new(),
            in_flight_count: 0,
            pending: 1,
            due: 1,
            oldest_pending: None,
            next_fire: None,
            last_error: String::new(),
            approvals: Vec::new(),
            keys: Vec::new(),
            paused: None,
            agent_paused: None,
            budget_spent: None,
        }
    }

    #[test]
    fn each_fact_gives_its_verdict_in_order() {
        assert_eq!(judge(&healthy()).0, Verdict::Running);

        let mut facts = healthy();
        facts.enabled = false;
        facts.agent.status = "stopped".into();
        assert_eq!(
            judge(&facts).0,
            Verdict::Disabled,
            "disabled beats the agent"
        );

        let mut facts = healthy();
        facts.agent.status = "stopped".into();
        assert_eq!(judge(&facts).0, Verdict::AgentStopped);
        facts.paused = Some(("ops".into(), SystemTime::now(), "provider outage".into()));
        let (verdict, line) = judge(&facts);
        assert_eq!(verdict, Verdict::Paused, "a pause beats the agent");
        assert!(
            line.contains("ops") && line.contains("provider outage"),
            "{line}"
        );
        facts.paused = None;
        facts.agent_paused = Some(("ops".into(), SystemTime::now(), "budget review".into()));
        let (verdict, summary) = judge(&facts);
        assert_eq!(verdict, Verdict::Paused, "{summary}");
        assert!(summary.contains("its agent is paused"), "{summary}");
        facts.agent_paused = None;
        facts.budget_spent = Some(("workflow x spent its budget: cost 12 of 10".into(), None));
        let (verdict, summary) = judge(&facts);
        assert_eq!(verdict, Verdict::BudgetExhausted, "{summary}");
        assert!(summary.contains("cost 12 of 10"), "{summary}");
        facts.budget_spent = None;

        facts.agent.status = "exited".into();
        facts.agent.generation = 4;
        assert_eq!(judge(&facts).0, Verdict::AgentCrashLooping);
        facts.agent.generation = 1;
        assert_eq!(judge(&facts).0, Verdict::AgentNotReady, "first launch");

        let mut facts = healthy();
        facts.runner_state = RunnerState::Standby;
        facts.lease_holder = Some(("other".into(), 7));
        let (verdict, line) = judge(&facts);
        assert_eq!(verdict, Verdict::LeaseElsewhere);
        assert!(line.contains("other") && line.contains('7'), "{line}");

        let mut facts = healthy();
        facts.in_flight_count = 1;
        facts.in_flight = vec![InFlightFacts {
            task_id: "t1".into(),
            attempt: 1,
            age: Duration::from_secs(300),
        }];
        let (verdict, line) = judge(&facts);
        assert_eq!(verdict, Verdict::ConcurrencyFull);
        assert!(line.contains("t1") && line.contains("5m"), "{line}");

        facts.approvals = vec![ApprovalFacts {
            approval_id: "a1".into(),
            task_id: "t1".into(),
            tool: "deploy".into(),
            age: Duration::from_secs(120),
        }];
        let (verdict, line) = judge(&facts);
        assert_eq!(
            verdict,
            Verdict::WaitingOnApproval,
            "a task waiting on a person explains a full concurrency"
        );
        assert!(
            line.contains("deploy") && line.contains("approve a1"),
            "{line}"
        );

        let mut facts = healthy();
        facts.keys = vec![KeyFacts {
            name: "provider:x".into(),
            max_running: 2,
            running: 2,
            holders: vec!["review".into(), "triage".into()],
            rate: None,
        }];
        let (verdict, line) = judge(&facts);
        assert_eq!(verdict, Verdict::WaitingOnKey);
        assert!(
            line.contains("provider:x")
                && line.contains("2 of 2")
                && line.contains("review, triage"),
            "{line}"
        );
        facts.keys[0].running = 1;
        assert_eq!(judge(&facts).0, Verdict::Running, "a free slot");
        // A free slot, but no token: 6 per minute, a quarter token left.
        facts.keys[0].rate = Some((6, Duration::from_secs(60), 0.25));
        let (verdict, line) = judge(&facts);
        assert_eq!(verdict, Verdict::RateLimited, "{line}");
        assert!(line.contains("provider:x") && line.contains("7s"), "{line}");
        facts.keys[0].rate = Some((6, Duration::from_secs(60), 1.5));
        assert_eq!(judge(&facts).0, Verdict::Running, "a token left");

        let mut facts = healthy();
        facts.pending = 0;
        facts.due = 0;
        assert_eq!(judge(&facts).0, Verdict::NothingDue);
    }
}
