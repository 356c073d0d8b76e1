//! Budgets, the usage agents report, and spent budgets' episodes. The
//! pass (`budget_pass`) decides with `model::budget::step` and keeps the
//! workflows' budget holds in step with the episodes, level-triggered:
//! whatever a crash left, the next pass puts right.

use std::time::Duration;

use super::*;
use crate::model::budget::{
    Amounts, Budget, Calendar, Exhaustion, Period, Scope, Step, Usage, episode_key, step,
};

/// Only one replica runs the budget pass at a time (a transaction-level
/// advisory lock; the others skip their turn).
const PASS_LOCK: i64 = 0x5348_4550_4255_4447; // "SHEPBUDG"

/// A budget with its usage this period and its episode, if it is spent.
#[derive(Debug, Clone)]
pub struct BudgetView {
    pub budget: Budget,
    pub usage: Usage,
    pub exhausted: Option<Exhaustion>,
}

const BUDGET_COLUMNS: &str = "scope, subject, rolling_ms, calendar, max_tasks, max_task_seconds, \
    max_cost, grace_ms, raised_tasks, raised_task_seconds, raised_cost, raised_until";

impl Store {
    /// Sets (or replaces, with no raise) the budget of its subject.
    pub async fn put_budget(&self, budget: &Budget) -> Result<()> {
        let (rolling_ms, calendar) = match budget.period {
            Period::Rolling(window) => (to_millis(window), ""),
            Period::Calendar(calendar) => (0, calendar.as_str()),
        };
        let client = self.pool.get().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO scheduler.budgets (scope, subject, rolling_ms, calendar, max_tasks,
                             max_task_seconds, max_cost, grace_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                         ON CONFLICT (scope, subject) DO UPDATE SET rolling_ms = $3, calendar = $4,
                             max_tasks = $5, max_task_seconds = $6, max_cost = $7, grace_ms = $8,
                             raised_tasks = 0, raised_task_seconds = 0, raised_cost = 0,
                             raised_until = NULL",
                    )
                    .await?,
                &[
                    &budget.scope.as_str(),
                    &budget.subject,
                    &rolling_ms,
                    &calendar,
                    &i64::try_from(budget.max.tasks).unwrap_or(i64::MAX),
                    &budget.max.task_seconds,
                    &budget.max.cost,
                    &to_millis(budget.grace),
                ],
            )
            .await?;
        Ok(())
    }

    /// Deletes a budget (and its episode: its holds go with the next
    /// pass); false if there was none.
    pub async fn delete_budget(&self, scope: Scope, subject: Uuid) -> Result<bool> {
        let client = self.pool.get().await?;
        let deleted = client
            .execute(
                &client
                    .prepare_cached(
                        "DELETE FROM scheduler.budgets WHERE scope = $1 AND subject = $2",
                    )
                    .await?,
                &[&scope.as_str(), &subject],
            )
            .await?;
        Ok(deleted == 1)
    }

    /// Every budget with its usage and episode (of `subjects` only, if
    /// given: a workflow and its agent, for the diagnosis).
    pub async fn budget_views(&self, subjects: Option<&[Uuid]>) -> Result<Vec<BudgetView>> {
        let client = self.pool.get().await?;
        let now = SystemTime::now();
        let mut views = Vec::new();
        for budget in budgets(&client, subjects).await? {
            let usage = usage(&client, &budget, now).await?;
            let exhausted = exhaustion(&client, budget.scope, budget.subject).await?;
            views.push(BudgetView {
                budget,
                usage,
                exhausted,
            });
        }
        Ok(views)
    }

    /// A spent budget (its approval not granted) that holds the workflow:
    /// its own, or its agent's; with the budget, for when it resets.
    pub async fn spent_budget(
        &self,
        workflow: Uuid,
        agent: Uuid,
    ) -> Result<Option<(Exhaustion, Budget)>> {
        let client = self.pool.get().await?;
        for budget in budgets(&client, Some(&[workflow, agent])).await? {
            let holds = match budget.scope {
                Scope::Workflow => budget.subject == workflow,
                Scope::Agent => budget.subject == agent,
            };
            if !holds {
                continue;
            }
            if let Some(episode) = exhaustion(&client, budget.scope, budget.subject).await?
                && !episode.approved
            {
                return Ok(Some((episode, budget)));
            }
        }
        Ok(None)
    }

    /// Records an attempt's usage totals (a replay or a repeat changes
    /// nothing; totals only grow). Tasks that are not the scheduler's are
    /// ignored.
    pub async fn record_usage(
        &self,
        task_id: &str,
        attempt: u32,
        agent: Uuid,
        totals: (u64, u64, f64),
    ) -> Result<()> {
        let Some(workflow) = task_id
            .split_once(':')
            .and_then(|(workflow, _)| workflow.parse::<Uuid>().ok())
        else {
            return Ok(());
        };
        let (input, output, cost) = totals;
        let client = self.pool.get().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO scheduler.task_usage (task_id, attempt, workflow_id, agent_id,
                             input_tokens, output_tokens, cost)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (task_id, attempt) DO UPDATE SET
                             input_tokens = greatest(task_usage.input_tokens, $5),
                             output_tokens = greatest(task_usage.output_tokens, $6),
                             cost = greatest(task_usage.cost, $7)",
                    )
                    .await?,
                &[
                    &task_id,
                    &to_i32(attempt),
                    &workflow,
                    &agent,
                    &i64::try_from(input).unwrap_or(i64::MAX),
                    &i64::try_from(output).unwrap_or(i64::MAX),
                    &cost,
                ],
            )
            .await?;
        Ok(())
    }

    /// One budget pass: for each budget, its usage and what `step` says
    /// (open or close its episode), then the holds made to match. Skipped
    /// (Ok(false)) while another replica runs one.
    pub async fn budget_pass(&self, now: SystemTime) -> Result<bool> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let locked: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PASS_LOCK])
            .await?
            .get(0);
        if !locked {
            return Ok(false);
        }
        for budget in budgets(&tx, None).await? {
            let used = usage(&tx, &budget, now).await?.used;
            let open = exhaustion(&tx, budget.scope, budget.subject).await?;
            match step(&budget, &used, open.as_ref(), now) {
                Step::Keep => {}
                Step::Close => close(&tx, budget.scope, budget.subject).await?,
                Step::Open { summary } => {
                    close(&tx, budget.scope, budget.subject).await?;
                    let key = episode_key(budget.scope, budget.subject, now);
                    tx.execute(
                        &tx.prepare_cached(
                            "INSERT INTO scheduler.budget_exhaustions (scope, subject, key, summary, since)
                             VALUES ($1, $2, $3, $4, $5)",
                        )
                        .await?,
                        &[&budget.scope.as_str(), &budget.subject, &key, &summary, &now],
                    )
                    .await?;
                }
            }
        }
        apply_holds(&tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Episodes the agent-manager has not acknowledged yet, with the
    /// workflow's agent (for a workflow's budget) and the grace.
    pub async fn unnotified_exhaustions(&self) -> Result<Vec<(Exhaustion, Uuid, Duration)>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT e.scope, e.subject, e.key, e.summary, e.since, e.notified, e.decision,
                                CASE e.scope WHEN 'agent' THEN e.subject
                                     ELSE (SELECT w.agent_id FROM scheduler.workflows w WHERE w.id = e.subject) END,
                                b.grace_ms
                         FROM scheduler.budget_exhaustions e
                         JOIN scheduler.budgets b USING (scope, subject)
                         WHERE NOT e.notified",
                    )
                    .await?,
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let agent: Option<Uuid> = row.get(7);
                Some((exhaustion_from_row(row), agent?, from_millis(row.get(8))))
            })
            .collect())
    }

    pub async fn exhaustion_notified(&self, key: &str) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE scheduler.budget_exhaustions SET notified = true WHERE key = $1",
                    )
                    .await?,
                &[&key],
            )
            .await?;
        Ok(())
    }

    /// The approval of an episode was decided: approved, the budget is
    /// raised (`Budget::raise`) and the holds lift at once; not, the
    /// episode stays until its budget is within its caps again. Nothing
    /// for a key no episode has (an old episode's, or not ours).
    pub async fn budget_decided(&self, key: &str, approved: bool, now: SystemTime) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let decision = if approved { "approved" } else { "denied" };
        let row = tx
            .query_opt(
                &tx.prepare_cached(
                    "UPDATE scheduler.budget_exhaustions SET decision = $2
                     WHERE key = $1 AND decision = '' RETURNING scope, subject",
                )
                .await?,
                &[&key, &decision],
            )
            .await?;
        let Some(row) = row else {
            return Ok(());
        };
        let (scope, subject) = (Scope::parse(row.get(0)), row.get::<_, Uuid>(1));
        if approved
            && let Some(budget) = budgets(&tx, Some(&[subject]))
                .await?
                .into_iter()
                .find(|budget| budget.scope == scope)
        {
            let (raised, until) = budget.raise(now);
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE scheduler.budgets SET raised_tasks = $3, raised_task_seconds = $4,
                         raised_cost = $5, raised_until = $6
                     WHERE scope = $1 AND subject = $2",
                )
                .await?,
                &[
                    &scope.as_str(),
                    &subject,
                    &i64::try_from(raised.tasks).unwrap_or(i64::MAX),
                    &raised.task_seconds,
                    &raised.cost,
                    &until,
                ],
            )
            .await?;
            apply_holds(&tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn budgets(
    client: &impl shepherd_platform::db::GenericClient,
    subjects: Option<&[Uuid]>,
) -> Result<Vec<Budget>> {
    let sql = format!(
        "SELECT {BUDGET_COLUMNS} FROM scheduler.budgets
         WHERE $1::uuid[] IS NULL OR subject = ANY($1) ORDER BY scope, subject"
    );
    let rows = client
        .query(&client.prepare_cached(&sql).await?, &[&subjects])
        .await?;
    rows.iter().map(budget_from_row).collect()
}

fn budget_from_row(row: &Row) -> Result<Budget> {
    let calendar: &str = row.get("calendar");
    let period = match Calendar::parse(calendar) {
        Some(calendar) => Period::Calendar(calendar),
        None => Period::Rolling(from_millis(row.get("rolling_ms"))),
    };
    let count = |column: &str| u64::try_from(row.get::<_, i64>(column)).unwrap_or(0);
    Ok(Budget {
        scope: Scope::parse(row.get("scope")),
        subject: row.get("subject"),
        period,
        max: Amounts {
            tasks: count("max_tasks"),
            task_seconds: row.get("max_task_seconds"),
            cost: row.get("max_cost"),
        },
        grace: from_millis(row.get("grace_ms")),
        raised: Amounts {
            tasks: count("raised_tasks"),
            task_seconds: row.get("raised_task_seconds"),
            cost: row.get("raised_cost"),
        },
        raised_until: row.get("raised_until"),
    })
}

/// The budget's usage in the period that holds `now`: tasks dispatched,
/// seconds of attempts (ended ones, and running ones so far), and the
/// usage agents reported.
async fn usage(
    client: &impl shepherd_platform::db::GenericClient,
    budget: &Budget,
    now: SystemTime,
) -> Result<Usage> {
    let since = budget.period_start(now);
    let row = client
        .query_one(
            &client
                .prepare_cached(
                    "WITH w AS (
                         SELECT id FROM scheduler.workflows
                         WHERE CASE $1 WHEN 'workflow' THEN id = $2 ELSE agent_id = $2 END)
                     SELECT
                       (SELECT count(*) FROM scheduler.tasks t
                        WHERE t.workflow_id IN (SELECT id FROM w) AND t.dispatched_at >= $3),
                       (SELECT coalesce(sum(extract(epoch FROM a.ended_at - greatest(a.started_at, $3))), 0)::float8
                        FROM scheduler.task_attempts a JOIN scheduler.tasks t ON t.id = a.task_id
                        WHERE t.workflow_id IN (SELECT id FROM w) AND a.ended_at >= $3
                          AND a.started_at IS NOT NULL)
                       + (SELECT coalesce(sum(extract(epoch FROM now() - greatest(t.dispatched_at, $3))), 0)::float8
                          FROM scheduler.tasks t
                          WHERE t.workflow_id IN (SELECT id FROM w) AND t.state = 'dispatched'),
                       u.cost, u.input_tokens, u.output_tokens
                     -- Sums of bigints are numeric: capped before they are
                     -- bigints again, so no report can make this fail.
                     FROM (SELECT coalesce(sum(cost), 0)::float8 AS cost,
                                  least(coalesce(sum(input_tokens), 0), 9223372036854775807)::bigint
                                      AS input_tokens,
                                  least(coalesce(sum(output_tokens), 0), 9223372036854775807)::bigint
                                      AS output_tokens
                           FROM scheduler.task_usage
                           WHERE CASE $1 WHEN 'workflow' THEN workflow_id = $2 ELSE agent_id = $2 END
                             AND first_at >= $3) u",
                )
                .await?,
            &[&budget.scope.as_str(), &budget.subject, &since],
        )
        .await?;
    let count = |index: usize| u64::try_from(row.get::<_, i64>(index)).unwrap_or(0);
    Ok(Usage {
        used: Amounts {
            tasks: count(0),
            task_seconds: row.get(1),
            cost: row.get(2),
        },
        input_tokens: count(3),
        output_tokens: count(4),
    })
}

async fn exhaustion(
    client: &impl shepherd_platform::db::GenericClient,
    scope: Scope,
    subject: Uuid,
) -> Result<Option<Exhaustion>> {
    let row = client
        .query_opt(
            &client
                .prepare_cached(
                    "SELECT scope, subject, key, summary, since, notified, decision
                     FROM scheduler.budget_exhaustions WHERE scope = $1 AND subject = $2",
                )
                .await?,
            &[&scope.as_str(), &subject],
        )
        .await?;
    Ok(row.as_ref().map(exhaustion_from_row))
}

fn exhaustion_from_row(row: &Row) -> Exhaustion {
    Exhaustion {
        scope: Scope::parse(row.get(0)),
        subject: row.get(1),
        key: row.get(2),
        summary: row.get(3),
        since: row.get(4),
        notified: row.get(5),
        approved: row.get::<_, &str>(6) == "approved",
    }
}

async fn close(
    client: &impl shepherd_platform::db::GenericClient,
    scope: Scope,
    subject: Uuid,
) -> Result<()> {
    client
        .execute(
            &client
                .prepare_cached(
                    "DELETE FROM scheduler.budget_exhaustions WHERE scope = $1 AND subject = $2",
                )
                .await?,
            &[&scope.as_str(), &subject],
        )
        .await?;
    Ok(())
}

/// Makes the workflows' budget holds say what the episodes say: a spent
/// budget whose approval is not granted holds its workflow (or every
/// workflow of its agent); nothing else does. Driven from the episodes
/// (few) and the held workflows (an index of them): the fleet is not
/// scanned.
async fn apply_holds(client: &impl shepherd_platform::db::GenericClient) -> Result<()> {
    for (scope, subject) in [(Scope::Workflow, "w.id"), (Scope::Agent, "w.agent_id")] {
        let hold = scope.hold();
        let scope = scope.as_str();
        let held_by =
            format!("e.scope = '{scope}' AND e.subject = {subject} AND e.decision <> 'approved'");
        let sql = format!(
            "UPDATE scheduler.workflows w SET holds = array_append(holds, '{hold}')
             FROM scheduler.budget_exhaustions e
             WHERE {held_by} AND NOT '{hold}' = ANY(w.holds)"
        );
        client
            .execute(&client.prepare_cached(&sql).await?, &[])
            .await?;
        let sql = format!(
            "UPDATE scheduler.workflows w SET holds = array_remove(holds, '{hold}')
             WHERE cardinality(w.holds) > 0 AND '{hold}' = ANY(w.holds)
               AND NOT EXISTS (SELECT FROM scheduler.budget_exhaustions e WHERE {held_by})"
        );
        client
            .execute(&client.prepare_cached(&sql).await?, &[])
            .await?;
    }
    Ok(())
}
