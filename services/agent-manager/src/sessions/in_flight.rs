//! The tasks forwarded on a session and not yet reported: their deadlines,
//! and any stop the agent was asked for.

use std::collections::HashMap;

use tokio::time::Instant;

use crate::model::task::TaskOutcome;

/// Tasks forwarded on a session and not yet reported, with their
/// deadlines and any stop the agent was asked for.
#[derive(Default)]
pub(super) struct InFlightTasks {
    tasks: HashMap<String, Tracked>,
}

struct Tracked {
    attempt: u32,
    /// The workflow its dispatcher named (empty: none or unknown).
    workflow_id: String,
    deadline: Option<Instant>,
    /// Asked to stop: why, and until when it may take to report.
    stop: Option<(TaskOutcome, Instant)>,
}

impl InFlightTasks {
    pub(super) fn delivered(
        &mut self,
        task_id: &str,
        attempt: u32,
        deadline: Option<std::time::SystemTime>,
        workflow_id: &str,
    ) {
        let deadline = deadline.and_then(|at| {
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            Instant::now().checked_add(left)
        });
        self.tasks.insert(
            task_id.to_owned(),
            Tracked {
                attempt,
                workflow_id: workflow_id.to_owned(),
                deadline,
                stop: None,
            },
        );
    }

    pub(super) fn contains(&self, task_id: &str) -> bool {
        self.tasks.contains_key(task_id)
    }

    /// The tasks (and attempts) of `workflow` this session runs; of every
    /// workflow for an empty one.
    pub(super) fn of_workflow(&self, workflow: &str) -> Vec<(String, u32)> {
        self.tasks
            .iter()
            .filter(|(_, tracked)| workflow.is_empty() || tracked.workflow_id == workflow)
            .map(|(task_id, tracked)| (task_id.clone(), tracked.attempt))
            .collect()
    }

    /// The workflow of `attempt` of the task, if this session runs that
    /// attempt.
    pub(super) fn workflow_of(&self, task_id: &str, attempt: u32) -> Option<&str> {
        self.tasks
            .get(task_id)
            .filter(|tracked| tracked.attempt == attempt)
            .map(|tracked| tracked.workflow_id.as_str())
    }

    /// Marks a task asked to stop (the first reason wins); false if this
    /// session does not run it.
    pub(super) fn stop(
        &mut self,
        task_id: &str,
        outcome: TaskOutcome,
        grace_until: Instant,
    ) -> bool {
        match self.tasks.get_mut(task_id) {
            Some(tracked) => {
                tracked.stop.get_or_insert((outcome, grace_until));
                true
            }
            None => false,
        }
    }

    /// Forgets a reported task; returns the outcome it must be recorded
    /// with if the agent was asked to stop it.
    pub(super) fn reported(&mut self, task_id: &str) -> Option<TaskOutcome> {
        self.tasks
            .remove(task_id)
            .and_then(|tracked| tracked.stop.map(|(outcome, _)| outcome))
    }

    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.tasks
            .values()
            .filter_map(|tracked| match tracked.stop {
                Some((_, grace_until)) => Some(grace_until),
                None => tracked.deadline,
            })
            .min()
    }

    /// The tasks whose deadline passed and that were not told to stop yet;
    /// they are marked as told now.
    pub(super) fn past_deadline(
        &mut self,
        now: Instant,
        grace_until: Instant,
    ) -> Vec<(String, u32)> {
        let mut due = Vec::new();
        for (task_id, tracked) in &mut self.tasks {
            if tracked.stop.is_none() && tracked.deadline.is_some_and(|at| at <= now) {
                tracked.stop = Some((TaskOutcome::TimedOut, grace_until));
                due.push((task_id.clone(), tracked.attempt));
            }
        }
        due
    }

    /// A task told to stop that has not reported within its grace.
    pub(super) fn past_grace(&self, now: Instant) -> Option<(String, u32, TaskOutcome)> {
        self.tasks
            .iter()
            .find_map(|(task_id, tracked)| match tracked.stop {
                Some((outcome, until)) if until <= now => {
                    Some((task_id.clone(), tracked.attempt, outcome))
                }
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_task_past_its_deadline_is_told_once_then_judged_after_its_grace() {
        let mut in_flight = InFlightTasks::default();
        let past = std::time::SystemTime::now() - Duration::from_secs(1);
        in_flight.delivered("late", 2, Some(past), "");
        in_flight.delivered("open-ended", 1, None, "");
        let now = Instant::now();
        let grace_until = now + Duration::from_secs(10);
        assert_eq!(
            in_flight.past_deadline(now, grace_until),
            vec![("late".to_owned(), 2)]
        );
        assert!(
            in_flight.past_deadline(now, grace_until).is_empty(),
            "told to stop once"
        );
        assert_eq!(in_flight.next_timer(), Some(grace_until));
        assert!(
            in_flight.past_grace(now).is_none(),
            "still within its grace"
        );
        assert_eq!(
            in_flight.past_grace(grace_until),
            Some(("late".to_owned(), 2, TaskOutcome::TimedOut))
        );
        // A report ends it as why it was stopped, whatever the agent says.
        assert_eq!(in_flight.reported("late"), Some(TaskOutcome::TimedOut));
        assert_eq!(in_flight.reported("open-ended"), None);
        assert_eq!(in_flight.next_timer(), None);
    }

    #[test]
    fn the_first_reason_to_stop_a_task_wins() {
        let mut in_flight = InFlightTasks::default();
        in_flight.delivered("t", 1, None, "");
        let until = Instant::now() + Duration::from_secs(5);
        assert!(in_flight.stop("t", TaskOutcome::Cancelled, until));
        assert!(in_flight.stop("t", TaskOutcome::TimedOut, until));
        assert!(
            !in_flight.stop("elsewhere", TaskOutcome::Cancelled, until),
            "a task this session does not run has nothing to stop"
        );
        assert_eq!(in_flight.reported("t"), Some(TaskOutcome::Cancelled));
    }
}
