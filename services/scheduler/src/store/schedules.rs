//! Schedule ticks: each due tick fires exactly once.

use super::*;

impl Store {
    /// Fires every due schedule tick, each exactly once (row locks make
    /// concurrent schedulers skip each other's ticks): records one pending
    /// task per tick with the tick time as idempotency key and advances the
    /// workflow's next tick. Returns the workflows that got a task.
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
            let tick: SystemTime = row.get("next_fire_at");
            let key = format!(
                "tick-{}",
                chrono::DateTime::<chrono::Utc>::from(tick).to_rfc3339()
            );
            let fields = TaskFields {
                title: format!("{} {key}", workflow.name),
                ..TaskFields::default()
            };
            let prompt = crate::template::render(&workflow.prompt_template, &fields)?;
            let script = crate::template::render_shell(&workflow.prompt_template)?;
            tx
            .execute(
                &tx.prepare_cached("INSERT INTO scheduler.tasks (id, workflow_id, idempotency_key, state, fields, prompt, script, timeout_ms, tool_policy)
                 VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING").await?,
                &[
                    &crate::model::task_id(workflow.id, &key),
                    &workflow.id,
                    &key,
                    &to_json(&fields)?,
                    &prompt,
                    &script,
                    &to_millis(workflow.task_timeout),
                    &to_json(&workflow.tool_policy)?,
                ],
            )
            .await?;
            // Skip ticks missed while down: one task for the backlog, then
            // back on schedule from now.
            let mut next = workflow.trigger.next_fire(tick);
            while let Some(at) = next
                && at <= SystemTime::now()
            {
                next = workflow.trigger.next_fire(at);
            }
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE scheduler.workflows SET next_fire_at = $2 WHERE id = $1",
                )
                .await?,
                &[&workflow.id, &next],
            )
            .await?;
            fired.push(workflow.id);
        }
        tx.commit().await?;
        Ok(fired)
    }
}
