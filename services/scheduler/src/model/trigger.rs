//! How a workflow's tasks come to be: its trigger, and for schedules the
//! tick arithmetic (which times are ticks).

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{SchedulePolicy, TaskState, WebhookTrigger};
use crate::error::Error;

/// How a workflow's tasks come to be. Every trigger records a pending task
/// first; the runner dispatches it when the agent can take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// Only `TriggerWorkflow`.
    Manual,
    /// One task per period.
    Interval {
        period_ms: u64,
        #[serde(default)]
        policy: SchedulePolicy,
    },
    /// One task at each match of the expression (UTC).
    Cron {
        expression: String,
        #[serde(default)]
        policy: SchedulePolicy,
    },
    /// One task, once, `delay` after the workflow was created.
    Delay { delay_ms: u64 },
    /// One task per signed HTTP delivery (see `webhook`).
    Webhook(WebhookTrigger),
    /// One task per restart of an agent (None: the workflow's own), keyed
    /// by the new generation.
    AgentRestart { agent: Option<Uuid> },
    /// One task per finished task of `parent` whose outcome matches.
    Chain { parent: Uuid, on: ChainOn },
}

/// Which parent outcomes a chain follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainOn {
    Succeeded,
    /// Failed or timed out.
    Failed,
    Any,
}

impl ChainOn {
    /// Whether a parent that ended in `state` makes a child.
    pub fn follows(self, state: TaskState) -> bool {
        matches!(
            (self, state),
            (Self::Succeeded | Self::Any, TaskState::Succeeded)
                | (
                    Self::Failed | Self::Any,
                    TaskState::Failed | TaskState::TimedOut
                )
        )
    }
}

/// Shortest interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest cron expression.
pub const MAX_CRON: usize = 256;
/// Longest interval or delay accepted: 100 years, far from any overflow
/// and well inside PostgreSQL's timestamp range.
pub const MAX_PERIOD: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Trigger {
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Self::Manual | Self::AgentRestart { .. } | Self::Chain { .. } => Ok(()),
            Self::Webhook(webhook) => webhook.validate(),
            Self::Delay { delay_ms } => {
                if Duration::from_millis(*delay_ms) > MAX_PERIOD {
                    Err(Error::invalid(
                        "workflow.trigger.delay.delay",
                        "must be at most 100 years",
                    ))
                } else {
                    Ok(())
                }
            }
            Self::Interval { period_ms, policy } => {
                let period = Duration::from_millis(*period_ms);
                if period < MIN_INTERVAL || period > MAX_PERIOD {
                    return Err(Error::invalid(
                        "workflow.trigger.interval.period",
                        "must be at least 1s and at most 100 years",
                    ));
                }
                policy.validate("workflow.trigger.interval.policy")
            }
            Self::Cron { expression, policy } => {
                policy.validate("workflow.trigger.cron.policy")?;
                shepherd_platform::validate::text(
                    "workflow.trigger.cron.expression",
                    expression,
                    MAX_CRON,
                )?;
                cron::Schedule::from_str(expression).map(drop).map_err(|_| {
                    Error::invalid(
                        "workflow.trigger.cron.expression",
                        format!("{} is not a valid cron expression; use 6-7 fields: sec min hour day-of-month month day-of-week [year], e.g. \"0 */5 * * * *\"", shepherd_platform::validate::quote(expression)),
                    )
                })
            }
        }
    }

    /// The first tick at or after `from` for a new (or re-enabled)
    /// workflow; None for manual triggers.
    pub fn first_fire(&self, created: SystemTime, from: SystemTime) -> Option<SystemTime> {
        match self {
            Self::Manual | Self::Webhook(_) | Self::AgentRestart { .. } | Self::Chain { .. } => {
                None
            }
            // Checked: a time past what SystemTime holds fires never,
            // rather than wrapping (validation keeps periods far from it).
            Self::Interval { period_ms, .. } => from.checked_add(Duration::from_millis(*period_ms)),
            Self::Cron { .. } => self.next_fire(from),
            Self::Delay { delay_ms } => created.checked_add(Duration::from_millis(*delay_ms)),
        }
    }

    /// The tick after `fired`; None when the trigger fires no more.
    pub fn next_fire(&self, fired: SystemTime) -> Option<SystemTime> {
        match self {
            Self::Manual
            | Self::Webhook(_)
            | Self::AgentRestart { .. }
            | Self::Chain { .. }
            | Self::Delay { .. } => None,
            Self::Interval { period_ms, .. } => {
                fired.checked_add(Duration::from_millis(*period_ms))
            }
            Self::Cron { expression, .. } => {
                let schedule = cron::Schedule::from_str(expression).ok()?;
                let after: chrono::DateTime<chrono::Utc> = fired.into();
                schedule.after(&after).next().map(SystemTime::from)
            }
        }
    }

    /// BUFFER_ONE keeps a tick waiting for the task that runs: that holds
    /// only when the workflow runs one task at a time (with more, the
    /// buffered task would start beside it at once).
    pub fn check_concurrency(&self, max_concurrency: u32) -> Result<(), Error> {
        let buffers = self
            .schedule_policy()
            .is_some_and(|policy| policy.overlap == super::Overlap::BufferOne);
        if buffers && max_concurrency > 1 {
            return Err(Error::invalid(
                "workflow.max_concurrency",
                "overlap BUFFER_ONE runs one task at a time: use max_concurrency 1 (or overlap SKIP)",
            ));
        }
        Ok(())
    }

    /// A schedule's policy; None for a trigger that is no schedule.
    pub fn schedule_policy(&self) -> Option<&SchedulePolicy> {
        match self {
            Self::Interval { policy, .. } | Self::Cron { policy, .. } => Some(policy),
            _ => None,
        }
    }

    /// The first tick at or after `at` of a schedule that ticks at
    /// `anchor`: an interval ticks at `anchor` plus or minus whole periods,
    /// a cron expression at its matches. None for a trigger that is no
    /// schedule, or past what a time can hold.
    pub fn tick_at_or_after(&self, anchor: SystemTime, at: SystemTime) -> Option<SystemTime> {
        match self {
            Self::Interval { period_ms, .. } => {
                let period = u128::from((*period_ms).max(1));
                match at.duration_since(anchor) {
                    Ok(ahead) => {
                        anchor.checked_add(periods(ahead.as_millis().div_ceil(period) * period))
                    }
                    Err(behind) => {
                        let behind = behind.duration().as_millis();
                        anchor.checked_sub(periods(behind / period * period))
                    }
                }
            }
            Self::Cron { expression, .. } => {
                let schedule = cron::Schedule::from_str(expression).ok()?;
                let from: chrono::DateTime<chrono::Utc> =
                    at.checked_sub(Duration::from_secs(1))?.into();
                schedule
                    .after(&from)
                    .map(SystemTime::from)
                    .find(|tick| *tick >= at)
            }
            _ => None,
        }
    }

    /// The last tick at or before `at` (see `tick_at_or_after`).
    pub fn tick_at_or_before(&self, anchor: SystemTime, at: SystemTime) -> Option<SystemTime> {
        match self {
            Self::Interval { period_ms, .. } => {
                let period = u128::from((*period_ms).max(1));
                match at.duration_since(anchor) {
                    Ok(ahead) => anchor.checked_add(periods(ahead.as_millis() / period * period)),
                    Err(behind) => {
                        let behind = behind.duration().as_millis();
                        anchor.checked_sub(periods(behind.div_ceil(period) * period))
                    }
                }
            }
            Self::Cron { expression, .. } => {
                let schedule = cron::Schedule::from_str(expression).ok()?;
                let until: chrono::DateTime<chrono::Utc> =
                    at.checked_add(Duration::from_secs(1))?.into();
                let mut before = schedule.after(&until);
                // Ticks are whole seconds apart: at most two steps back.
                (0..3)
                    .map_while(|_| before.next_back().map(SystemTime::from))
                    .find(|tick| *tick <= at)
            }
            _ => None,
        }
    }
}

/// Milliseconds as a duration, saturating (callers check the result).
fn periods(millis: u128) -> Duration {
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn interval_ticks_keep_the_anchors_phase_both_ways() {
        let every_10s = Trigger::Interval {
            period_ms: 10_000,
            policy: SchedulePolicy::default(),
        };
        let anchor = at(1_000_003);
        // After the anchor.
        assert_eq!(
            every_10s.tick_at_or_after(anchor, at(1_000_004)),
            Some(at(1_000_013))
        );
        assert_eq!(
            every_10s.tick_at_or_after(anchor, at(1_000_013)),
            Some(at(1_000_013))
        );
        assert_eq!(
            every_10s.tick_at_or_before(anchor, at(1_000_022)),
            Some(at(1_000_013))
        );
        assert_eq!(
            every_10s.tick_at_or_before(anchor, at(1_000_023)),
            Some(at(1_000_023))
        );
        // Before it (a backfill of the past).
        assert_eq!(
            every_10s.tick_at_or_after(anchor, at(999_990)),
            Some(at(999_993))
        );
        assert_eq!(
            every_10s.tick_at_or_after(anchor, at(999_993)),
            Some(at(999_993))
        );
        assert_eq!(
            every_10s.tick_at_or_before(anchor, at(999_992)),
            Some(at(999_983))
        );
        assert_eq!(every_10s.tick_at_or_before(anchor, anchor), Some(anchor));
        // Far from the anchor, either way: no overflow, no panic.
        let far = at(9_000_000_000);
        assert!(
            every_10s
                .tick_at_or_before(far, SystemTime::UNIX_EPOCH)
                .is_some()
        );
        assert!(
            every_10s
                .tick_at_or_after(SystemTime::UNIX_EPOCH, far)
                .is_some()
        );
    }

    #[test]
    fn cron_ticks_are_its_matches() {
        let every_5s = Trigger::Cron {
            expression: "*/5 * * * * *".into(),
            policy: SchedulePolicy::default(),
        };
        let anchor = at(0);
        assert_eq!(
            every_5s.tick_at_or_after(anchor, at(1_000_001)),
            Some(at(1_000_005))
        );
        assert_eq!(
            every_5s.tick_at_or_after(anchor, at(1_000_005)),
            Some(at(1_000_005))
        );
        let half = Duration::from_millis(500);
        assert_eq!(
            every_5s.tick_at_or_after(anchor, at(1_000_004) + half),
            Some(at(1_000_005))
        );
        assert_eq!(
            every_5s.tick_at_or_before(anchor, at(1_000_009)),
            Some(at(1_000_005))
        );
        assert_eq!(
            every_5s.tick_at_or_before(anchor, at(1_000_010)),
            Some(at(1_000_010))
        );
        assert_eq!(
            every_5s.tick_at_or_before(anchor, at(1_000_010) + half),
            Some(at(1_000_010))
        );
        assert_eq!(Trigger::Manual.tick_at_or_after(anchor, at(5)), None);
    }

    #[test]
    fn triggers_validate_and_schedule() {
        assert!(
            Trigger::Interval {
                period_ms: 500,
                policy: SchedulePolicy::default(),
            }
            .validate()
            .is_err()
        );
        assert!(
            Trigger::Cron {
                expression: "nonsense".into(),
                policy: SchedulePolicy::default(),
            }
            .validate()
            .is_err()
        );
        let cron = Trigger::Cron {
            expression: "0 0 * * * *".into(),
            policy: SchedulePolicy::default(),
        };
        assert!(cron.validate().is_ok());
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(3600 * 10 + 5);
        assert_eq!(
            cron.next_fire(start),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(3600 * 11))
        );
        let interval = Trigger::Interval {
            period_ms: 2000,
            policy: SchedulePolicy::default(),
        };
        assert_eq!(
            interval.next_fire(start),
            Some(start + Duration::from_secs(2))
        );
        let delay = Trigger::Delay { delay_ms: 100 };
        assert_eq!(
            delay.first_fire(start, start),
            Some(start + Duration::from_millis(100))
        );
        assert_eq!(delay.next_fire(start), None);
        assert_eq!(Trigger::Manual.first_fire(start, start), None);
    }
}

#[cfg(test)]
mod properties {
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;

    use super::Trigger;

    /// PostgreSQL's timestamptz ends in year 294276; anything a schedule
    /// computes must stay far inside it.
    fn storable(at: SystemTime) -> bool {
        at.duration_since(SystemTime::UNIX_EPOCH)
            .is_ok_and(|since| since < Duration::from_secs(9_000_000_000_000))
    }

    proptest! {
        /// Any period or delay, however extreme, is either refused or
        /// schedules a time after now that the database can store: no
        /// wrap, no panic.
        #[test]
        fn accepted_schedules_never_overflow(
            millis in any::<u64>(),
            offset in 0u64..(200 * 365 * 24 * 3600),
        ) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let from = now + Duration::from_secs(offset / 100);
            for trigger in [
                Trigger::Interval { period_ms: millis, policy: Default::default() },
                Trigger::Delay { delay_ms: millis },
            ] {
                if trigger.validate().is_err() {
                    continue;
                }
                let first = trigger.first_fire(now, from);
                prop_assert!(first.is_some_and(|at| at >= now && storable(at)), "{trigger:?}: {first:?}");
                if let Some(fired) = first {
                    let next = trigger.next_fire(fired);
                    prop_assert!(next.is_none_or(|at| at > fired && storable(at)), "{trigger:?}: {next:?}");
                }
            }
        }

        /// Cron expressions of any text are refused or parsed, never a panic.
        #[test]
        fn cron_text_never_panics(expression in ".{0,300}") {
            let _ = Trigger::Cron { expression, policy: Default::default() }.validate();
        }
    }
}
