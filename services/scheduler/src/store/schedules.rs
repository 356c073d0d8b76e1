//! Schedule ticks: each due tick fires at most once (its task is keyed by
//! the tick), as the schedule's catch-up and overlap policies say; a
//! backfill makes the ticks of a past range, idempotently.

use futures_util::future::try_join_all;
use shepherd_platform::db::Transaction;

use super::*;
use crate::model::Overlap;
use crate::tick_plan::{self, BackfillRefusal};

/// What a backfill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backfilled {
    pub ticks: usize,
    pub created: usize,
}

impl Store {
    /// Fires every due schedule tick (row locks make concurrent schedulers
    /// skip each other's workflows): records one task per tick the plan
    /// fires, keyed by the tick (pending, or skipped when the overlap
    /// policy refuses it), and stores the workflow's next tick. Returns the
    /// workflows that got a task.
    pub async fn fire_due_ticks(&self, limit: i64) -> Result<Vec<Uuid>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS}, next_fire_at FROM scheduler.workflows
             WHERE enabled AND next_fire_at <= now()
             ORDER BY next_fire_at LIMIT $1 FOR UPDATE SKIP LOCKED"
        );
        let rows = tx.query(&tx.prepare_cached(&sql).await?, &[&limit]).await?;
        let mut fired = Vec::with_capacity(rows.len());
        for row in &rows {
            let workflow = workflow_from_row(row)?;
            let due: SystemTime = row.get("next_fire_at");
            let plan = tick_plan::plan(&workflow.trigger, due, SystemTime::now());
            if fire_ticks(&tx, &workflow, &plan.fire).await? {
                fired.push(workflow.id);
            }
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE scheduler.workflows SET next_fire_at = $2 WHERE id = $1",
                )
                .await?,
                &[&workflow.id, &plan.next],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(fired)
    }

    /// Makes the task of every tick of the workflow's schedule from `from`
    /// to `to` that has none yet. Interval ticks keep the phase of the
    /// workflow's next tick (or of its creation, when it has none).
    pub async fn backfill(
        &self,
        workflow: Uuid,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Backfilled> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS}, coalesce(next_fire_at, created_at) AS anchor
             FROM scheduler.workflows WHERE id = $1 FOR SHARE"
        );
        let row = tx
            .query_opt(&tx.prepare_cached(&sql).await?, &[&workflow])
            .await?
            .ok_or(Error::WorkflowNotFound(workflow))?;
        let found = workflow_from_row(&row)?;
        let ticks = tick_plan::backfill_ticks(&found.trigger, row.get("anchor"), from, to)
            .map_err(|refusal| match refusal {
                BackfillRefusal::NotASchedule => Error::failed_precondition(format!(
                    "workflow {workflow} has no schedule to backfill; only interval and cron triggers have ticks"
                )),
                BackfillRefusal::TooManyTicks => Error::invalid(
                    "to",
                    format!(
                        "the range holds more than {} ticks; backfill at most {} at a time",
                        crate::model::MAX_BACKFILL_TICKS,
                        crate::model::MAX_BACKFILL_TICKS
                    ),
                ),
            })?;
        let script = crate::template::render_shell(&found.prompt_template)?;
        let inserts = ticks
            .iter()
            .map(|tick| insert_tick(&tx, &found, &script, *tick, None));
        let created = try_join_all(inserts)
            .await?
            .into_iter()
            .filter(|inserted| *inserted)
            .count();
        tx.commit().await?;
        Ok(Backfilled {
            ticks: ticks.len(),
            created,
        })
    }
}

/// Records the ticks' tasks, the overlap policy deciding each one's state.
/// Whether any pending task was made.
async fn fire_ticks(
    tx: &Transaction<'_>,
    workflow: &Workflow,
    ticks: &[SystemTime],
) -> Result<bool> {
    let overlap = workflow
        .trigger
        .schedule_policy()
        .map_or(Overlap::Allow, |policy| policy.overlap);
    let (mut pending, running) = if overlap == Overlap::Allow || ticks.is_empty() {
        (0, 0)
    } else {
        open_tasks(tx, workflow.id).await?
    };
    // The script refers to the fields through the environment: the same
    // for every tick.
    let script = crate::template::render_shell(&workflow.prompt_template)?;
    let mut made = false;
    for tick in ticks {
        let refused = (!overlap.admits(pending, running)).then(|| overlap.refusal());
        if insert_tick(tx, workflow, &script, *tick, refused).await? && refused.is_none() {
            pending += 1;
            made = true;
        }
    }
    Ok(made)
}

/// The workflow's tasks waiting and running now.
async fn open_tasks(tx: &Transaction<'_>, workflow: Uuid) -> Result<(u64, u64)> {
    let row = tx
        .query_one(
            &tx.prepare_cached(
                "SELECT count(*) FILTER (WHERE state = 'pending'),
                        count(*) FILTER (WHERE state = 'dispatched')
                 FROM scheduler.tasks
                 WHERE workflow_id = $1 AND state IN ('pending', 'dispatched')",
            )
            .await?,
            &[&workflow],
        )
        .await?;
    let count = |index: usize| u64::try_from(row.get::<_, i64>(index)).unwrap_or(0);
    Ok((count(0), count(1)))
}

/// Inserts the task of one tick, keyed `tick-<RFC 3339 time>`: pending, or
/// skipped with `skipped` as its reason. False when the tick had its task
/// already.
async fn insert_tick(
    tx: &Transaction<'_>,
    workflow: &Workflow,
    script: &str,
    tick: SystemTime,
    skipped: Option<&str>,
) -> Result<bool> {
    let key = format!(
        "tick-{}",
        chrono::DateTime::<chrono::Utc>::from(tick).to_rfc3339()
    );
    let fields = TaskFields {
        title: format!("{} {key}", workflow.name),
        ..TaskFields::default()
    };
    let prompt = crate::template::render(&workflow.prompt_template, &fields)?;
    let state = if skipped.is_some() {
        TaskState::Skipped
    } else {
        TaskState::Pending
    };
    let inserted = tx
        .execute(
            &tx.prepare_cached(
                "INSERT INTO scheduler.tasks (id, workflow_id, idempotency_key, state, fields, prompt,
                     script, timeout_ms, tool_policy, last_error)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            )
            .await?,
            &[
                &crate::model::task_id(workflow.id, &key),
                &workflow.id,
                &key,
                &state.as_str(),
                &to_json(&fields)?,
                &prompt,
                &script,
                &to_millis(workflow.task_timeout),
                &to_json(&workflow.tool_policy)?,
                &skipped.unwrap_or(""),
            ],
        )
        .await?;
    Ok(inserted == 1)
}
