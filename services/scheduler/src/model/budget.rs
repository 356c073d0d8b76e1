//! Budgets: what a workflow, or an agent's workflows together, may spend
//! per period, and the pure decisions about them (the period, whether it
//! is spent, what an approval raises). `budgets` (the actor) applies them.

use std::time::{Duration, SystemTime};

use chrono::{Datelike, TimeZone, Utc};
use uuid::Uuid;

use crate::error::Error;

/// Largest caps accepted.
pub const MAX_BUDGET_TASKS: u64 = 1_000_000_000;
pub const MAX_BUDGET_AMOUNT: f64 = 1e12;
/// Shortest and longest sliding window.
pub const MIN_ROLLING: Duration = Duration::from_secs(60);
pub const MAX_ROLLING: Duration = Duration::from_secs(31 * 24 * 3600);
/// Longest grace a spent budget gives running tasks, and the default.
pub const MAX_GRACE: Duration = Duration::from_secs(3600);
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Whose budget: one workflow's, or all of an agent's workflows'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Workflow,
    Agent,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workflow => "workflow",
            Self::Agent => "agent",
        }
    }

    /// As stored (anything else: agent, the wider one).
    pub fn parse(text: &str) -> Self {
        match text {
            "workflow" => Self::Workflow,
            _ => Self::Agent,
        }
    }

    /// The hold a spent budget of this scope puts on workflows.
    pub fn hold(self) -> &'static str {
        match self {
            Self::Workflow => "budget:workflow",
            Self::Agent => "budget:agent",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// The window up to now.
    Rolling(Duration),
    Calendar(Calendar),
}

/// A UTC calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calendar {
    Day,
    /// Monday to Sunday.
    Week,
    Month,
}

impl Calendar {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Day, Self::Week, Self::Month]
            .into_iter()
            .find(|calendar| calendar.as_str() == text)
    }
}

/// Tasks started, task-seconds run and cost reported: a budget's caps, an
/// approval's raise, or what was used.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Amounts {
    pub tasks: u64,
    pub task_seconds: f64,
    pub cost: f64,
}

/// Usage in a period, with the tokens reported beside the cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub used: Amounts,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub scope: Scope,
    pub subject: Uuid,
    pub period: Period,
    /// 0 in a field: no cap.
    pub max: Amounts,
    pub grace: Duration,
    /// What approvals added, and until when it counts.
    pub raised: Amounts,
    pub raised_until: Option<SystemTime>,
}

impl Budget {
    pub fn validate(&self) -> Result<(), Error> {
        let max = &self.max;
        if max.tasks == 0 && max.task_seconds == 0.0 && max.cost == 0.0 {
            return Err(Error::invalid(
                "budget",
                "set at least one of max_tasks, max_task_seconds and max_cost",
            ));
        }
        if max.tasks > MAX_BUDGET_TASKS {
            return Err(Error::invalid(
                "budget.max_tasks",
                format!("must be at most {MAX_BUDGET_TASKS}"),
            ));
        }
        for (field, value) in [
            ("budget.max_task_seconds", max.task_seconds),
            ("budget.max_cost", max.cost),
        ] {
            if !(0.0..=MAX_BUDGET_AMOUNT).contains(&value) {
                return Err(Error::invalid(field, "must be 0 to 1e12"));
            }
        }
        if let Period::Rolling(window) = self.period
            && !(MIN_ROLLING..=MAX_ROLLING).contains(&window)
        {
            return Err(Error::invalid(
                "budget.rolling",
                "must be 1 minute to 31 days",
            ));
        }
        if self.grace > MAX_GRACE {
            return Err(Error::invalid("budget.grace", "must be 0 to 1 hour"));
        }
        Ok(())
    }

    /// Where the period that holds `now` began.
    pub fn period_start(&self, now: SystemTime) -> SystemTime {
        match self.period {
            Period::Rolling(window) => now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH),
            Period::Calendar(calendar) => calendar_start(calendar, now),
        }
    }

    /// When the period that holds `now` ends (a sliding window never does).
    pub fn resets_at(&self, now: SystemTime) -> Option<SystemTime> {
        match self.period {
            Period::Rolling(_) => None,
            Period::Calendar(calendar) => Some(calendar_next(calendar, now)),
        }
    }

    /// What approvals raised, while the raise lasts.
    fn raised_at(&self, now: SystemTime) -> Amounts {
        if self.raised_until.is_some_and(|until| now < until) {
            self.raised
        } else {
            Amounts::default()
        }
    }

    /// The caps in force at `now`: the budget's, plus what approvals
    /// raised while their raise lasts.
    pub fn limits(&self, now: SystemTime) -> Amounts {
        let raised = self.raised_at(now);
        Amounts {
            tasks: self.max.tasks.saturating_add(raised.tasks),
            task_seconds: self.max.task_seconds + raised.task_seconds,
            cost: self.max.cost + raised.cost,
        }
    }

    /// Which cap `usage` has reached, in words; None while within all.
    pub fn spent(&self, usage: &Amounts, now: SystemTime) -> Option<String> {
        let limits = self.limits(now);
        if self.max.tasks > 0 && usage.tasks >= limits.tasks {
            return Some(format!("tasks {} of {}", usage.tasks, limits.tasks));
        }
        if self.max.task_seconds > 0.0 && usage.task_seconds >= limits.task_seconds {
            return Some(format!(
                "task-seconds {:.1} of {}",
                usage.task_seconds, limits.task_seconds
            ));
        }
        if self.max.cost > 0.0 && usage.cost >= limits.cost {
            return Some(format!("cost {} of {}", usage.cost, limits.cost));
        }
        None
    }

    /// An approval to go on: one more of each cap, for the rest of the
    /// period (a sliding window: for one window from now). Returns the new
    /// raise and until when it counts.
    pub fn raise(&self, now: SystemTime) -> (Amounts, SystemTime) {
        let current = self.raised_at(now);
        let until = match self.period {
            Period::Rolling(window) => now.checked_add(window).unwrap_or(now),
            Period::Calendar(calendar) => calendar_next(calendar, now),
        };
        let raised = Amounts {
            tasks: current.tasks.saturating_add(self.max.tasks),
            task_seconds: current.task_seconds + self.max.task_seconds,
            cost: current.cost + self.max.cost,
        };
        (raised, until)
    }
}

fn calendar_start(calendar: Calendar, now: SystemTime) -> SystemTime {
    let now: chrono::DateTime<Utc> = now.into();
    let day = now.date_naive();
    let start = match calendar {
        Calendar::Day => day,
        Calendar::Week => day - chrono::Days::new(u64::from(now.weekday().num_days_from_monday())),
        Calendar::Month => day.with_day(1).unwrap_or(day),
    };
    Utc.from_utc_datetime(&start.and_time(chrono::NaiveTime::MIN))
        .into()
}

fn calendar_next(calendar: Calendar, now: SystemTime) -> SystemTime {
    let start: chrono::DateTime<Utc> = calendar_start(calendar, now).into();
    let next = match calendar {
        Calendar::Day => start.checked_add_days(chrono::Days::new(1)),
        Calendar::Week => start.checked_add_days(chrono::Days::new(7)),
        Calendar::Month => start.checked_add_months(chrono::Months::new(1)),
    };
    next.map_or(now, SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        chrono::DateTime::parse_from_rfc3339(text)
            .expect("a time")
            .with_timezone(&Utc)
            .into()
    }

    fn budget(period: Period, max: Amounts) -> Budget {
        Budget {
            scope: Scope::Workflow,
            subject: Uuid::nil(),
            period,
            max,
            grace: DEFAULT_GRACE,
            raised: Amounts::default(),
            raised_until: None,
        }
    }

    #[test]
    fn calendar_periods_are_utc_days_weeks_and_months() {
        let now = at("2026-12-09T15:30:00Z"); // a Wednesday
        let cost = Amounts {
            cost: 1.0,
            ..Amounts::default()
        };
        for (calendar, start, next) in [
            (
                Calendar::Day,
                "2026-12-09T00:00:00Z",
                "2026-12-10T00:00:00Z",
            ),
            (
                Calendar::Week,
                "2026-12-07T00:00:00Z",
                "2026-12-14T00:00:00Z",
            ),
            (
                Calendar::Month,
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
        ] {
            let budget = budget(Period::Calendar(calendar), cost);
            assert_eq!(budget.period_start(now), at(start), "{calendar:?}");
            assert_eq!(budget.resets_at(now), Some(at(next)), "{calendar:?}");
        }
        let rolling = budget(Period::Rolling(Duration::from_secs(3600)), cost);
        assert_eq!(rolling.period_start(now), at("2026-12-09T14:30:00Z"));
        assert_eq!(rolling.resets_at(now), None);
    }

    #[test]
    fn a_budget_is_spent_at_its_first_reached_cap_and_an_approval_raises_it() {
        let now = at("2026-12-09T15:30:00Z");
        let mut budget = budget(
            Period::Calendar(Calendar::Day),
            Amounts {
                tasks: 0,
                task_seconds: 0.0,
                cost: 10.0,
            },
        );
        let used = |cost| Amounts {
            tasks: 500,
            task_seconds: 1e6,
            cost,
        };
        assert_eq!(
            budget.spent(&used(9.5), now),
            None,
            "uncapped fields never spend it"
        );
        assert_eq!(
            budget.spent(&used(12.0), now).as_deref(),
            Some("cost 12 of 10")
        );
        let (raised, until) = budget.raise(now);
        assert_eq!(raised.cost, 10.0);
        assert_eq!(until, at("2026-12-10T00:00:00Z"), "for the rest of the day");
        budget.raised = raised;
        budget.raised_until = Some(until);
        assert_eq!(budget.spent(&used(12.0), now), None);
        assert_eq!(
            budget.spent(&used(20.0), now).as_deref(),
            Some("cost 20 of 20")
        );
        // The next day the raise is gone (and the usage with the period).
        assert!(
            budget
                .spent(&used(12.0), at("2026-12-10T00:00:01Z"))
                .is_some()
        );
    }

    #[test]
    fn bad_budgets_are_refused() {
        let cost = Amounts {
            cost: 1.0,
            ..Amounts::default()
        };
        assert!(
            budget(Period::Calendar(Calendar::Day), cost)
                .validate()
                .is_ok()
        );
        assert!(
            budget(Period::Calendar(Calendar::Day), Amounts::default())
                .validate()
                .is_err(),
            "no cap"
        );
        for bad in [-1.0, f64::NAN, f64::INFINITY, 2e12] {
            let max = Amounts {
                cost: bad,
                ..Amounts::default()
            };
            assert!(
                budget(Period::Calendar(Calendar::Day), max)
                    .validate()
                    .is_err(),
                "{bad}"
            );
        }
        for window in [Duration::ZERO, Duration::from_secs(59), MAX_ROLLING * 2] {
            assert!(
                budget(Period::Rolling(window), cost).validate().is_err(),
                "{window:?}"
            );
        }
    }
}

/// A spent budget's episode as stored: its approval's key, and how that
/// was decided ("" while pending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhaustion {
    pub scope: Scope,
    pub subject: Uuid,
    pub key: String,
    pub summary: String,
    pub since: SystemTime,
    pub notified: bool,
    pub approved: bool,
}

impl Exhaustion {
    /// "workflow <id> spent its budget: cost 12 of 10", as people see it.
    pub fn describe(&self) -> String {
        format!(
            "{} {} spent its budget: {}",
            self.scope.as_str(),
            self.subject,
            self.summary
        )
    }
}

/// What the budget pass does about one budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing changes.
    Keep,
    /// Spent now: hold it and ask (a new episode, or a new one in place of
    /// one whose approval was granted and spent again).
    Open { summary: String },
    /// Within its caps again (the period moved on, or an approval raised
    /// them): release it.
    Close,
}

/// The budget pass's decision for one budget.
pub fn step(budget: &Budget, usage: &Amounts, open: Option<&Exhaustion>, now: SystemTime) -> Step {
    match (budget.spent(usage, now), open) {
        (Some(summary), None) => Step::Open { summary },
        (Some(summary), Some(episode)) if episode.approved => Step::Open { summary },
        (None, Some(_)) => Step::Close,
        _ => Step::Keep,
    }
}

/// The key an episode's approval is raised with at the agent-manager
/// (one approval per episode, however often it is asked).
pub fn episode_key(scope: Scope, subject: Uuid, since: SystemTime) -> String {
    let millis = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    format!("budget:{}:{subject}:{millis}", scope.as_str())
}

#[cfg(test)]
mod steps {
    use super::*;

    #[test]
    fn the_pass_opens_keeps_reopens_and_closes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let budget = Budget {
            scope: Scope::Agent,
            subject: Uuid::nil(),
            period: Period::Calendar(Calendar::Day),
            max: Amounts {
                tasks: 2,
                ..Amounts::default()
            },
            grace: DEFAULT_GRACE,
            raised: Amounts::default(),
            raised_until: None,
        };
        let used = |tasks| Amounts {
            tasks,
            ..Amounts::default()
        };
        let episode = |approved| Exhaustion {
            scope: Scope::Agent,
            subject: Uuid::nil(),
            key: episode_key(Scope::Agent, Uuid::nil(), now),
            summary: String::new(),
            since: now,
            notified: true,
            approved,
        };
        assert_eq!(step(&budget, &used(1), None, now), Step::Keep);
        assert_eq!(
            step(&budget, &used(2), None, now),
            Step::Open {
                summary: "tasks 2 of 2".into()
            }
        );
        assert_eq!(
            step(&budget, &used(3), Some(&episode(false)), now),
            Step::Keep
        );
        assert!(matches!(
            step(&budget, &used(3), Some(&episode(true)), now),
            Step::Open { .. }
        ));
        assert_eq!(
            step(&budget, &used(1), Some(&episode(false)), now),
            Step::Close
        );
        assert_eq!(
            episode_key(Scope::Agent, Uuid::nil(), now),
            format!("budget:agent:{}:1800000000000", Uuid::nil())
        );
    }
}
