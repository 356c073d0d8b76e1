//! Budgets on the wire and in the model.

use std::time::{Duration, SystemTime};

use shepherd_proto::scheduler::v1 as pb;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::budget::{Amounts, Budget, Calendar, DEFAULT_GRACE, Period, Scope};
use crate::store::BudgetView;

/// Whose budget: exactly one of a workflow and an agent.
pub(crate) fn subject(workflow_id: &str, agent_id: &str) -> Result<(Scope, Uuid)> {
    match (workflow_id, agent_id) {
        (workflow, "") if !workflow.is_empty() => Ok((
            Scope::Workflow,
            crate::model::parse_id("workflow_id", workflow, "workflow")?,
        )),
        ("", agent) if !agent.is_empty() => Ok((
            Scope::Agent,
            crate::model::parse_id("agent_id", agent, "agent")?,
        )),
        _ => Err(Error::invalid(
            "workflow_id, agent_id",
            "name exactly one: a workflow's budget or an agent's",
        )),
    }
}

pub(crate) fn budget_from(budget: Option<pb::Budget>) -> Result<Budget> {
    let budget = budget.ok_or_else(|| Error::invalid("budget", "is required"))?;
    let (scope, subject) = subject(&budget.workflow_id, &budget.agent_id)?;
    let period = match (
        budget.rolling,
        pb::CalendarPeriod::try_from(budget.calendar),
    ) {
        (Some(window), Ok(pb::CalendarPeriod::Unspecified)) => Period::Rolling(
            shepherd_platform::validate::non_negative_duration(window)
                .ok_or_else(|| Error::invalid("budget.rolling", "must be 1 minute to 31 days"))?,
        ),
        (None, Ok(pb::CalendarPeriod::Day)) => Period::Calendar(Calendar::Day),
        (None, Ok(pb::CalendarPeriod::Week)) => Period::Calendar(Calendar::Week),
        (None, Ok(pb::CalendarPeriod::Month)) => Period::Calendar(Calendar::Month),
        _ => {
            return Err(Error::invalid(
                "budget.rolling, budget.calendar",
                "name exactly one period: a rolling window or DAY, WEEK or MONTH",
            ));
        }
    };
    let grace = match budget.grace {
        None => DEFAULT_GRACE,
        Some(grace) => shepherd_platform::validate::non_negative_duration(grace)
            .ok_or_else(|| Error::invalid("budget.grace", "must be 0 to 1 hour"))?,
    };
    let budget = Budget {
        scope,
        subject,
        period,
        max: Amounts {
            tasks: budget.max_tasks,
            task_seconds: budget.max_task_seconds,
            cost: budget.max_cost,
        },
        grace,
        raised: Amounts::default(),
        raised_until: None,
    };
    budget.validate()?;
    Ok(budget)
}

pub(crate) fn budget_to(view: BudgetView, now: SystemTime) -> pb::Budget {
    let BudgetView {
        budget,
        usage,
        exhausted,
    } = view;
    let (workflow_id, agent_id) = match budget.scope {
        Scope::Workflow => (budget.subject.to_string(), String::new()),
        Scope::Agent => (String::new(), budget.subject.to_string()),
    };
    let (rolling, calendar) = match budget.period {
        Period::Rolling(window) => (duration(window), pb::CalendarPeriod::Unspecified),
        Period::Calendar(Calendar::Day) => (None, pb::CalendarPeriod::Day),
        Period::Calendar(Calendar::Week) => (None, pb::CalendarPeriod::Week),
        Period::Calendar(Calendar::Month) => (None, pb::CalendarPeriod::Month),
    };
    pb::Budget {
        workflow_id,
        agent_id,
        rolling,
        calendar: calendar as i32,
        max_tasks: budget.max.tasks,
        max_task_seconds: budget.max.task_seconds,
        max_cost: budget.max.cost,
        grace: duration(budget.grace),
        usage: Some(pb::BudgetUsage {
            tasks: usage.used.tasks,
            task_seconds: usage.used.task_seconds,
            cost: usage.used.cost,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
        }),
        resets_at: budget.resets_at(now).map(Into::into),
        exhausted: exhausted
            .filter(|episode| !episode.approved)
            .map(|episode| episode.summary)
            .unwrap_or_default(),
    }
}

fn duration(duration: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(duration).ok()
}
