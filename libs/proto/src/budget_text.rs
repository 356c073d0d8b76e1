//! A budget in words, as the CLI, `shepherd top` and the console show it:
//! written once here, beside the message.

use crate::scheduler::v1::{Budget, CalendarPeriod};

/// What each cap has used: "tasks 3/10, cost 12/10".
pub fn used(budget: &Budget) -> String {
    let usage = budget.usage.unwrap_or_default();
    let mut parts = Vec::new();
    if budget.max_tasks > 0 {
        parts.push(format!("tasks {}/{}", usage.tasks, budget.max_tasks));
    }
    if budget.max_task_seconds > 0.0 {
        parts.push(format!(
            "task-seconds {:.0}/{}",
            usage.task_seconds, budget.max_task_seconds
        ));
    }
    if budget.max_cost > 0.0 {
        parts.push(format!("cost {}/{}", usage.cost, budget.max_cost));
    }
    parts.join(", ")
}

/// Its period: "day", "week", "month", or "last 6h 0m 0s".
pub fn period(budget: &Budget) -> String {
    match budget.calendar() {
        CalendarPeriod::Unspecified => budget
            .rolling
            .map(|window| format!("last {}s", window.seconds))
            .unwrap_or_default(),
        calendar => crate::short_name(calendar.as_str_name(), "CALENDAR_PERIOD_").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::v1::BudgetUsage;

    #[test]
    fn a_budget_reads_as_its_caps_and_period() {
        let budget = Budget {
            calendar: CalendarPeriod::Week as i32,
            max_tasks: 10,
            max_cost: 10.0,
            usage: Some(BudgetUsage {
                tasks: 3,
                cost: 12.0,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(used(&budget), "tasks 3/10, cost 12/10");
        assert_eq!(period(&budget), "week");
        let rolling = Budget {
            rolling: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(period(&rolling), "last 3600s");
    }
}
