//! `shepherd budgets`: what workflows and agents may spend.

use shepherd_proto::scheduler::v1 as sched;

use crate::cli::{BudgetCommand, BudgetSubject};
use crate::clients::{Clients, UsageError};
use crate::render;

impl Clients {
    pub(super) async fn budgets(&mut self, command: BudgetCommand) -> anyhow::Result<()> {
        match command {
            BudgetCommand::List => {
                let budgets = self
                    .workflows
                    .list_budgets(sched::ListBudgetsRequest {})
                    .await?
                    .into_inner()
                    .budgets;
                render::many(self.output, &budgets);
            }
            BudgetCommand::Put {
                subject,
                per,
                max_tasks,
                max_task_seconds,
                max_cost,
                grace,
            } => {
                let (workflow_id, agent_id) = self.budget_subject(subject).await?;
                let (rolling, calendar) = period(&per)?;
                let budget = self
                    .workflows
                    .put_budget(sched::PutBudgetRequest {
                        budget: Some(sched::Budget {
                            workflow_id,
                            agent_id,
                            rolling,
                            calendar: calendar as i32,
                            max_tasks,
                            max_task_seconds,
                            max_cost,
                            grace: grace
                                .and_then(|grace| prost_types::Duration::try_from(grace).ok()),
                            ..Default::default()
                        }),
                    })
                    .await?
                    .into_inner();
                render::one(self.output, &budget);
            }
            BudgetCommand::Delete { subject } => {
                let (workflow_id, agent_id) = self.budget_subject(subject).await?;
                self.workflows
                    .delete_budget(sched::DeleteBudgetRequest {
                        workflow_id,
                        agent_id,
                    })
                    .await?;
                eprintln!("deleted the budget");
            }
        }
        Ok(())
    }

    /// The budget of a workflow or an agent (one id empty), if it has one
    /// and the scheduler can say (`agents get` works without it).
    pub(super) async fn budget_of(
        &mut self,
        workflow_id: &str,
        agent_id: &str,
    ) -> Option<sched::Budget> {
        let budgets = self
            .workflows
            .list_budgets(sched::ListBudgetsRequest {})
            .await
            .ok()?
            .into_inner()
            .budgets;
        budgets
            .into_iter()
            .find(|budget| budget.workflow_id == workflow_id && budget.agent_id == agent_id)
    }

    /// (workflow id, agent id), one of them empty.
    async fn budget_subject(&mut self, subject: BudgetSubject) -> anyhow::Result<(String, String)> {
        Ok(match (subject.workflow, subject.agent) {
            (Some(workflow), _) => (self.workflow_id(&workflow).await?, String::new()),
            (None, Some(agent)) => (String::new(), self.agent_id(&agent).await?),
            // clap requires one of the two.
            (None, None) => return Err(UsageError("--workflow or --agent".into()).into()),
        })
    }
}

/// `--per`: a calendar period's name, or a sliding window's length.
fn period(per: &str) -> anyhow::Result<(Option<prost_types::Duration>, sched::CalendarPeriod)> {
    Ok(match per {
        "day" => (None, sched::CalendarPeriod::Day),
        "week" => (None, sched::CalendarPeriod::Week),
        "month" => (None, sched::CalendarPeriod::Month),
        window => {
            let window = humantime::parse_duration(window).map_err(|_| {
                UsageError(format!(
                    "--per {window:?}: use day, week, month or a window such as 6h"
                ))
            })?;
            (
                prost_types::Duration::try_from(window).ok(),
                sched::CalendarPeriod::Unspecified,
            )
        }
    })
}
