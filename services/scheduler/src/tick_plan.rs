//! Which ticks of a schedule make a task: the pure decisions behind
//! `Store::fire_due_ticks` (catch-up of ticks missed while no scheduler
//! fired them) and `Store::backfill` (every tick of a range, bounded).
//! The overlap rule needs the workflow's tasks counted, so it is applied
//! per tick where they are (`Overlap::admits`).

use std::time::{Duration, SystemTime};

use crate::model::{CatchUp, MAX_BACKFILL_TICKS, Trigger};

/// A tick seen this soon after it came fires "on time"; an older one was
/// missed (the schedule loop looks every 250 ms; the slack covers a slow
/// round).
pub(crate) const ON_TIME: Duration = Duration::from_secs(2);
/// Most ticks of one workflow fired in one round: a long catch-up (ALL)
/// goes on in the next rounds instead of holding the workflow's row.
pub(crate) const MAX_FIRED_PER_ROUND: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TickPlan {
    /// Ticks that make a task, oldest first.
    pub fire: Vec<SystemTime>,
    /// The next tick to look at; None: the trigger fires no more.
    pub next: Option<SystemTime>,
}

/// The ticks from `due` (the workflow's next tick, stored) up to `now` and
/// what becomes of them under the schedule's catch-up policy.
pub(crate) fn plan(trigger: &Trigger, due: SystemTime, now: SystemTime) -> TickPlan {
    let Some(policy) = trigger.schedule_policy() else {
        // A delay fires once, whenever it is seen.
        return TickPlan {
            fire: vec![due],
            next: trigger.next_fire(due),
        };
    };
    // The database's clock said due; this host's may lag a little.
    let now = now.max(due);
    let on_time_from = now.checked_sub(ON_TIME).unwrap_or(SystemTime::UNIX_EPOCH);
    let latest = trigger.tick_at_or_before(due, now);
    let next = trigger.next_fire(latest.unwrap_or(now));
    let mut fire = Vec::new();
    match policy.catch_up {
        CatchUp::All => {
            let window_from = now
                .checked_sub(policy.window())
                .unwrap_or(SystemTime::UNIX_EPOCH)
                .min(on_time_from);
            let mut tick = trigger.tick_at_or_after(due, window_from.max(due));
            while let Some(at) = tick
                && at <= now
            {
                if fire.len() == MAX_FIRED_PER_ROUND {
                    // The rest in the next round, from here.
                    return TickPlan {
                        fire,
                        next: Some(at),
                    };
                }
                fire.push(at);
                tick = trigger.next_fire(at);
            }
        }
        CatchUp::None | CatchUp::Latest => {
            // Every tick on time fires (at most 3: intervals are >= 1 s).
            let mut tick = trigger.tick_at_or_after(due, on_time_from.max(due));
            while let Some(at) = tick
                && at <= now
            {
                fire.push(at);
                tick = trigger.next_fire(at);
            }
            let window_from = now.checked_sub(policy.window());
            if fire.is_empty()
                && policy.catch_up == CatchUp::Latest
                && let Some(latest) = latest
                && window_from.is_none_or(|from| latest >= from)
            {
                fire.push(latest);
            }
        }
    }
    TickPlan { fire, next }
}

/// Why a backfill range is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BackfillRefusal {
    /// The trigger is not an interval or cron schedule.
    NotASchedule,
    /// More than `MAX_BACKFILL_TICKS` ticks in the range.
    TooManyTicks,
}

/// Every tick from `from` to `to` (both included) of a schedule that ticks
/// at `anchor`, at most `MAX_BACKFILL_TICKS`.
pub(crate) fn backfill_ticks(
    trigger: &Trigger,
    anchor: SystemTime,
    from: SystemTime,
    to: SystemTime,
) -> Result<Vec<SystemTime>, BackfillRefusal> {
    if trigger.schedule_policy().is_none() {
        return Err(BackfillRefusal::NotASchedule);
    }
    let mut ticks = Vec::new();
    let mut tick = trigger.tick_at_or_after(anchor, from);
    while let Some(at) = tick
        && at <= to
    {
        if ticks.len() == MAX_BACKFILL_TICKS {
            return Err(BackfillRefusal::TooManyTicks);
        }
        ticks.push(at);
        tick = trigger.next_fire(at);
    }
    Ok(ticks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Overlap, SchedulePolicy};

    fn at(secs: f64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(1_000_000.0 + secs)
    }

    fn every(secs: u64, catch_up: CatchUp, window_secs: u64) -> Trigger {
        Trigger::Interval {
            period_ms: secs * 1000,
            policy: SchedulePolicy {
                catch_up,
                window_ms: window_secs * 1000,
                overlap: Overlap::Allow,
            },
        }
    }

    #[test]
    fn a_tick_seen_on_time_fires_under_every_policy() {
        for catch_up in [CatchUp::None, CatchUp::Latest, CatchUp::All] {
            let trigger = every(5, catch_up, 3600);
            let plan = plan(&trigger, at(0.0), at(0.1));
            assert_eq!(plan.fire, vec![at(0.0)], "{catch_up:?}");
            assert_eq!(plan.next, Some(at(5.0)), "{catch_up:?}");
        }
    }

    #[test]
    fn three_ticks_missed_while_down() {
        // Ticks at 0, 5 and 10 came while no scheduler ran; it is back at 12.5.
        let now = at(12.5);
        let all = plan(&every(5, CatchUp::All, 3600), at(0.0), now);
        assert_eq!(all.fire, vec![at(0.0), at(5.0), at(10.0)]);
        let latest = plan(&every(5, CatchUp::Latest, 3600), at(0.0), now);
        assert_eq!(latest.fire, vec![at(10.0)]);
        let none = plan(&every(5, CatchUp::None, 3600), at(0.0), now);
        assert!(none.fire.is_empty());
        for plan in [all, latest, none] {
            assert_eq!(plan.next, Some(at(15.0)), "back on schedule");
        }
    }

    #[test]
    fn latest_is_superseded_by_a_tick_on_time() {
        let plan = plan(&every(5, CatchUp::Latest, 3600), at(0.0), at(11.0));
        assert_eq!(plan.fire, vec![at(10.0)]);
        let plan = super::plan(&every(5, CatchUp::None, 3600), at(0.0), at(11.0));
        assert_eq!(plan.fire, vec![at(10.0)], "on time is not missed");
    }

    #[test]
    fn ticks_older_than_the_window_are_not_caught_up() {
        // Down from 0 to 100; the window is 30 s.
        let all = plan(&every(10, CatchUp::All, 30), at(0.0), at(105.0));
        assert_eq!(all.fire, vec![at(80.0), at(90.0), at(100.0)]);
        let latest = plan(&every(10, CatchUp::Latest, 3), at(0.0), at(105.0));
        assert!(latest.fire.is_empty(), "the latest, at 100, is 5 s old");
        assert_eq!(latest.next, Some(at(110.0)));
    }

    #[test]
    fn a_long_catch_up_goes_on_in_later_rounds() {
        let trigger = every(1, CatchUp::All, 3600);
        let first = plan(&trigger, at(0.0), at(1000.0));
        assert_eq!(first.fire.len(), MAX_FIRED_PER_ROUND);
        assert_eq!(first.next, Some(at(100.0)), "the first tick not fired");
        let second = plan(&trigger, at(100.0), at(1000.25));
        assert_eq!(second.fire.first(), Some(&at(100.0)));
    }

    #[test]
    fn a_delay_fires_once() {
        let plan = plan(&Trigger::Delay { delay_ms: 10 }, at(0.0), at(99.0));
        assert_eq!(plan.fire, vec![at(0.0)]);
        assert_eq!(plan.next, None);
    }

    #[test]
    fn a_cron_schedule_catches_up_its_matches() {
        let trigger = Trigger::Cron {
            expression: "*/5 * * * * *".into(),
            policy: SchedulePolicy {
                catch_up: CatchUp::All,
                ..SchedulePolicy::default()
            },
        };
        let plan = plan(&trigger, at(0.0), at(12.5));
        assert_eq!(plan.fire, vec![at(0.0), at(5.0), at(10.0)]);
        assert_eq!(plan.next, Some(at(15.0)));
    }

    #[test]
    fn backfill_covers_the_range_both_ends_included_and_is_bounded() {
        let trigger = every(10, CatchUp::Latest, 3600);
        let ticks = backfill_ticks(&trigger, at(1000.0), at(0.0), at(30.0));
        assert_eq!(ticks, Ok(vec![at(0.0), at(10.0), at(20.0), at(30.0)]));
        let none = backfill_ticks(&trigger, at(1000.0), at(1.0), at(9.0));
        assert_eq!(none, Ok(Vec::new()));
        let limit = (MAX_BACKFILL_TICKS as f64 - 1.0) * 10.0;
        assert_eq!(
            backfill_ticks(&trigger, at(0.0), at(0.0), at(limit)).map(|t| t.len()),
            Ok(MAX_BACKFILL_TICKS)
        );
        assert_eq!(
            backfill_ticks(&trigger, at(0.0), at(0.0), at(limit + 10.0)),
            Err(BackfillRefusal::TooManyTicks)
        );
        assert_eq!(
            backfill_ticks(&Trigger::Manual, at(0.0), at(0.0), at(10.0)),
            Err(BackfillRefusal::NotASchedule)
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::model::{Overlap, SchedulePolicy};

    proptest! {
        /// Whatever the policy and however long the scheduler was away:
        /// fired ticks are ticks in (due..=now), oldest first, each once;
        /// the next tick comes after them, and is in the future unless the
        /// round was full.
        #[test]
        fn plans_fire_each_tick_once_in_order(
            period in 1u64..100,
            away_ms in 0u64..1_000_000,
            window in 1u64..10_000,
            policy in 0usize..3,
        ) {
            let catch_up = [CatchUp::None, CatchUp::Latest, CatchUp::All][policy];
            let trigger = Trigger::Interval {
                period_ms: period * 1000,
                policy: SchedulePolicy { catch_up, window_ms: window * 1000, overlap: Overlap::Allow },
            };
            let due = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let now = due + Duration::from_millis(away_ms);
            let plan = plan(&trigger, due, now);
            prop_assert!(plan.fire.windows(2).all(|pair| pair[0] < pair[1]));
            prop_assert!(plan.fire.iter().all(|tick| *tick >= due && *tick <= now));
            let next = plan.next.expect("an interval never ends here");
            prop_assert!(plan.fire.last().is_none_or(|last| next > *last));
            prop_assert!(next > now || plan.fire.len() == MAX_FIRED_PER_ROUND);
            if catch_up != CatchUp::All {
                prop_assert!(plan.fire.len() <= 3);
            }
        }
    }
}
