//! Tasks: recording, reading and settling them; outcomes (with the
//! chained tasks they make) in one transaction.

use super::*;

impl Store {
    /// Records a pending task. With an existing key, returns the existing
    /// task instead (`false`): accepted means stored, once.
    pub async fn insert_task(
        &self,
        workflow: Uuid,
        key: &str,
        fields: &TaskFields,
        rendered: &Rendered,
        trace_context: &std::collections::HashMap<String, String>,
    ) -> Result<(Task, bool)> {
        let client = self.pool.get().await?;
        let id = crate::model::task_id(workflow, key);
        let sql = format!(
            "INSERT INTO scheduler.tasks (id, workflow_id, idempotency_key, state, fields, prompt, trace_context, script, timeout_ms, tool_policy, priority)
             VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO NOTHING RETURNING {TASK_COLUMNS}"
        );
        let result = client
            .query_opt(
                &client.prepare_cached(&sql).await?,
                &[
                    &id,
                    &workflow,
                    &key,
                    &to_json(fields)?,
                    &rendered.prompt,
                    &to_json(trace_context)?,
                    &rendered.script,
                    &to_millis(rendered.timeout),
                    &to_json(&rendered.tool_policy)?,
                    &rendered.priority,
                ],
            )
            .await;
        match result {
            Ok(Some(row)) => Ok((task_from_row(&row)?, true)),
            // The key exists: read it on the same connection. Taking a
            // second one while holding this one would deadlock a pool that
            // a burst of same-key retries has emptied.
            Ok(None) => Ok((task_by_id(&client, &id).await?, false)),
            Err(err) if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                Err(Error::WorkflowNotFound(workflow))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// A task with its attempt history.
    pub async fn get_task(&self, id: &str) -> Result<Task> {
        let client = self.pool.get().await?;
        let mut task = task_by_id(&client, id).await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT attempt, outcome, error, started_at, ended_at
                         FROM scheduler.task_attempts WHERE task_id = $1 ORDER BY attempt",
                    )
                    .await?,
                &[&id],
            )
            .await?;
        task.history = rows
            .iter()
            .map(|row| TaskAttempt {
                attempt: from_i32(row.get(0)),
                outcome: row.get(1),
                error: row.get(2),
                started_at: row.get(3),
                ended_at: row.get(4),
            })
            .collect();
        if task.state == TaskState::Succeeded {
            task.history.push(TaskAttempt {
                attempt: task.attempts,
                outcome: TaskState::Succeeded.as_str().to_owned(),
                error: String::new(),
                started_at: task.dispatched_at,
                ended_at: task.updated_at,
            });
        }
        Ok(task)
    }

    pub async fn list_tasks(
        &self,
        workflow: Uuid,
        state: Option<TaskState>,
        dead_letter_only: bool,
        after_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<(i64, Task)>> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT seq, {TASK_COLUMNS} FROM scheduler.tasks
             WHERE workflow_id = $1 AND ($2::text IS NULL OR state = $2) AND ($3::bigint IS NULL OR seq > $3)
               AND (NOT $5 OR dead_letter)
             ORDER BY seq LIMIT $4"
        );
        let state = state.map(TaskState::as_str);
        client
            .query(
                &client.prepare_cached(&sql).await?,
                &[&workflow, &state, &after_seq, &limit, &dead_letter_only],
            )
            .await?
            .iter()
            .map(|row| Ok((row.get("seq"), task_from_row(row)?)))
            .collect()
    }

    /// Cancels a task that is still in `from` (pending: at once; dispatched:
    /// one the agent-manager does not run any more); returns it if it was.
    pub async fn cancel_task(&self, id: &str, from: TaskState) -> Result<Option<Task>> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE scheduler.tasks SET state = 'cancelled', last_error = 'cancelled on request',
                    updated_at = now()
             WHERE id = $1 AND state = $2 RETURNING {TASK_COLUMNS}"
        );
        let row = client
            .query_opt(&client.prepare_cached(&sql).await?, &[&id, &from.as_str()])
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    /// Puts a claimed task back (the dispatch did not happen).
    pub async fn release(&self, id: &str, error: &str) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                &client.prepare_cached("UPDATE scheduler.tasks SET state = 'pending', attempts = attempts - 1, last_error = $2,
                        updated_at = now()
                 WHERE id = $1 AND state = 'dispatched'").await?,
                &[&id, &error],
            )
            .await?;
        Ok(())
    }

    /// Aligns the attempt count with the agent-manager's (a re-dispatch of
    /// a task it already holds is not a new attempt).
    pub async fn set_attempts(&self, id: &str, attempts: u32) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                &client.prepare_cached("UPDATE scheduler.tasks SET attempts = $2 WHERE id = $1 AND state = 'dispatched'").await?,
                &[&id, &to_i32(attempts)],
            )
            .await?;
        Ok(())
    }

    /// Records outcomes of the attempts in flight, in one statement; returns
    /// the workflows whose tasks changed, and for each recorded outcome
    /// its final state and how long since dispatch (seconds). A report
    /// about an attempt older than the one we know of is stale and ignored;
    /// a newer one (our count not yet aligned with the manager's) is taken.
    pub async fn complete_many(
        &self,
        outcomes: &[Outcome],
    ) -> Result<(Vec<Uuid>, Vec<(TaskState, f64)>)> {
        let mut client = self.pool.get().await?;
        // One transaction: the outcomes and the chained tasks they make.
        let tx = client.transaction().await?;
        // Rows in key order, so that concurrent callers cannot deadlock.
        let mut outcomes: Vec<&Outcome> = outcomes.iter().collect();
        outcomes.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        let ids: Vec<&str> = outcomes.iter().map(|o| o.task_id.as_str()).collect();
        let states: Vec<&str> = outcomes.iter().map(|o| o.end.state().as_str()).collect();
        let outputs: Vec<&str> = outcomes.iter().map(|o| o.output.as_str()).collect();
        let attempts: Vec<Option<i32>> = outcomes.iter().map(|o| o.attempt.map(to_i32)).collect();
        // A retryable end with attempts left goes back to pending after the
        // policy's backoff; without attempts left it is dead-lettered. Each
        // attempt that did not succeed is kept in the history; a success is
        // the task's own final state and times (`get_task` adds it), which
        // spares the hot path a row per task.
        let sql = format!(
            "WITH v AS (
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::integer[])
                     AS v(id, state, output, attempt)
             ), done AS (
                 UPDATE scheduler.tasks t
                 SET state = CASE WHEN scheduler.retries(w.retry, v.state) AND t.attempts < w.max_attempts
                                  THEN 'pending' ELSE v.state END,
                     not_before = CASE WHEN scheduler.retries(w.retry, v.state) AND t.attempts < w.max_attempts
                                       THEN now() + scheduler.retry_delay(w.retry, t.attempts) END,
                     dead_letter = scheduler.retries(w.retry, v.state) AND t.attempts >= w.max_attempts,
                     output = v.output,
                     last_error = CASE WHEN v.state = 'succeeded' THEN '' ELSE v.state END,
                     updated_at = now()
                 FROM v, scheduler.workflows w
                 WHERE t.id = v.id AND w.id = t.workflow_id AND t.state = 'dispatched'
                   AND (v.attempt IS NULL OR t.attempts <= v.attempt)
                 RETURNING t.id, t.workflow_id, v.state AS outcome, t.attempts, t.dispatched_at,
                           GREATEST(extract(epoch FROM clock_timestamp() - t.dispatched_at), 0)::float8 AS seconds,
                           t.state AS final_state, t.output, t.fields, t.chain_depth,
                           {} AS chains
             ), history AS (
                 INSERT INTO scheduler.task_attempts (task_id, attempt, outcome, started_at)
                 SELECT id, attempts, outcome, dispatched_at FROM done
                 WHERE outcome <> 'succeeded'
                 ON CONFLICT (task_id, attempt) DO NOTHING
             )
             SELECT workflow_id, outcome, coalesce(seconds, 0), id, final_state, output, fields,
                    chain_depth, chains
             FROM done",
            chains::HAS_CHILDREN
        );
        let rows = tx
            .query(
                &tx.prepare_cached(&sql).await?,
                &[&ids, &states, &outputs, &attempts],
            )
            .await?;
        let finished = rows
            .iter()
            .filter(|row| row.get::<_, bool>("chains"))
            .filter_map(|row| chains::finished_from_row(row).transpose())
            .collect::<Result<Vec<_>>>()?;
        chains::insert_children(&tx, &finished).await?;
        tx.commit().await?;
        let mut workflows: Vec<Uuid> = rows.iter().map(|row| row.get(0)).collect();
        workflows.sort_unstable();
        workflows.dedup();
        let finished = rows
            .iter()
            .filter_map(|row| Some((TaskState::parse(row.get(1))?, row.get(2))))
            .collect();
        Ok((workflows, finished))
    }

    /// A lost attempt: back to pending (after the retry policy's backoff)
    /// while attempts remain, else failed and dead-lettered.
    pub async fn lost(&self, id: &str, attempt: Option<u32>, reason: &str) -> Result<Option<Uuid>> {
        let mut client = self.pool.get().await?;
        // One transaction: the outcome and the chained tasks it makes.
        let tx = client.transaction().await?;
        let attempt = attempt.map(to_i32);
        let row = tx
            .query_opt(
                &tx.prepare_cached(&format!(
                        "WITH done AS (
                             UPDATE scheduler.tasks t
                             SET state = CASE WHEN t.attempts >= w.max_attempts THEN 'failed' ELSE 'pending' END,
                                 not_before = CASE WHEN t.attempts < w.max_attempts
                                                   THEN now() + scheduler.retry_delay(w.retry, t.attempts) END,
                                 dead_letter = t.attempts >= w.max_attempts,
                                 last_error = $3, updated_at = now()
                             FROM scheduler.workflows w
                             WHERE t.id = $1 AND w.id = t.workflow_id AND t.state = 'dispatched'
                               AND ($2::integer IS NULL OR t.attempts <= $2)
                             RETURNING t.id, t.workflow_id, t.attempts, t.dispatched_at,
                                       t.state AS final_state, t.output, t.fields, t.chain_depth,
                                       {} AS chains
                         ), history AS (
                             INSERT INTO scheduler.task_attempts (task_id, attempt, outcome, error, started_at)
                             SELECT id, attempts, 'lost', $3, dispatched_at FROM done
                             ON CONFLICT (task_id, attempt) DO NOTHING
                         )
                         SELECT workflow_id, id, final_state, output, fields, chain_depth, chains
                         FROM done",
                        chains::HAS_CHILDREN
                    ))
                    .await?,
                &[&id, &attempt, &reason],
            )
            .await?;
        if let Some(row) = &row
            && row.get::<_, bool>("chains")
            && let Some(finished) = chains::finished_from_row(row)?
        {
            chains::insert_children(&tx, &[finished]).await?;
        }
        tx.commit().await?;
        Ok(row.map(|row| row.get(0)))
    }
}
