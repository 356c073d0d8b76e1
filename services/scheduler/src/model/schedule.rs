//! A schedule's policy: what becomes of ticks it could not fire when they
//! came (catch-up) and of ticks that come while earlier tasks of the
//! workflow are still waiting or running (overlap). `tick_plan` applies it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How far back missed ticks are caught up unless the policy says.
pub const DEFAULT_CATCH_UP_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The longest catch-up window accepted.
pub const MAX_CATCH_UP_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most ticks one `BackfillWorkflow` call may cover.
pub const MAX_BACKFILL_TICKS: usize = 1000;

/// Stored inside the trigger's JSON; workflows stored before it existed
/// read the defaults (LATEST within a day, ALLOW), which is what a
/// schedule did then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulePolicy {
    pub catch_up: CatchUp,
    /// How far back missed ticks are caught up (LATEST, ALL).
    pub window_ms: u64,
    pub overlap: Overlap,
}

impl Default for SchedulePolicy {
    fn default() -> Self {
        Self {
            catch_up: CatchUp::Latest,
            window_ms: millis(DEFAULT_CATCH_UP_WINDOW),
            overlap: Overlap::Allow,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl SchedulePolicy {
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// `field` names the trigger's policy (interval or cron).
    pub fn validate(&self, field: &str) -> Result<(), Error> {
        let window = self.window();
        if window < Duration::from_secs(1) || window > MAX_CATCH_UP_WINDOW {
            return Err(Error::invalid(
                format!("{field}.catch_up_window"),
                "must be 1s to 30 days (unset: 1 day)",
            ));
        }
        Ok(())
    }
}

/// Which missed ticks make a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// None: a tick not fired on time is dropped.
    None,
    /// One, the latest within the window, unless a tick on time fires.
    Latest,
    /// Every one within the window, once each.
    All,
}

/// Whether a tick makes a task while earlier ones are pending or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    Allow,
    /// Not while any task of the workflow is pending or running.
    Skip,
    /// At most one pending behind the running ones.
    BufferOne,
}

impl Overlap {
    /// Whether a tick makes a task, given the workflow's tasks that wait
    /// (`pending`) and run (`running`) now.
    pub fn admits(self, pending: u64, running: u64) -> bool {
        match self {
            Self::Allow => true,
            Self::Skip => pending == 0 && running == 0,
            Self::BufferOne => pending == 0,
        }
    }

    /// Why a refused tick was skipped, as the task records it.
    pub fn refusal(self) -> &'static str {
        match self {
            Self::Skip => {
                "skipped: an earlier task of the workflow was still pending or running (overlap SKIP)"
            }
            _ => "skipped: a task of the workflow was already waiting (overlap BUFFER_ONE)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_admits_as_documented() {
        for (overlap, pending, running, admits) in [
            (Overlap::Allow, 5, 5, true),
            (Overlap::Skip, 0, 0, true),
            (Overlap::Skip, 0, 1, false),
            (Overlap::Skip, 1, 0, false),
            (Overlap::BufferOne, 0, 3, true),
            (Overlap::BufferOne, 1, 3, false),
            (Overlap::BufferOne, 1, 0, false),
        ] {
            assert_eq!(
                overlap.admits(pending, running),
                admits,
                "{overlap:?} {pending} {running}"
            );
        }
    }

    #[test]
    fn windows_are_bounded() {
        let field = "workflow.trigger.cron.policy";
        assert!(SchedulePolicy::default().validate(field).is_ok());
        for window_ms in [0, 999, millis(MAX_CATCH_UP_WINDOW) + 1, u64::MAX] {
            let policy = SchedulePolicy {
                window_ms,
                ..SchedulePolicy::default()
            };
            assert!(policy.validate(field).is_err(), "{window_ms}");
        }
    }

    #[test]
    fn a_policy_stored_before_it_existed_reads_the_old_behaviour() {
        let policy: SchedulePolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(policy, SchedulePolicy::default());
        assert_eq!(policy.catch_up, CatchUp::Latest);
        assert_eq!(policy.overlap, Overlap::Allow);
    }
}
