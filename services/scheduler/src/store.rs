//! SQL for the `scheduler` schema. The scheduler never reads the
//! agent-manager's tables: what it knows of agents comes over gRPC.

use std::time::SystemTime;

use shepherd_platform::columns::{from_i32, from_json, from_millis, to_i32, to_json, to_millis};
use shepherd_platform::db::{DbPool, Migration};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{Task, TaskAttempt, TaskEnd, TaskFields, TaskState, Trigger, Workflow};

mod chains;
mod claims;
mod due;
mod in_flight;
mod leases;
mod replicas;
mod task_events;

pub use claims::ClaimRequest;
pub use in_flight::{InFlight, InFlightScope, OldestInFlight};
pub use leases::LeaseAcquisition;
pub use task_events::{TaskChange, TaskChanges, TaskCursor, TaskEventFilter};

pub const SCHEMA: &str = "scheduler";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "task_trace_context",
        sql: include_str!("../migrations/0002_task_trace_context.sql"),
    },
    Migration {
        version: 3,
        name: "drop_redundant_task_key",
        sql: include_str!("../migrations/0003_drop_redundant_task_key.sql"),
    },
    Migration {
        version: 4,
        name: "runner_leases",
        sql: include_str!("../migrations/0004_runner_leases.sql"),
    },
    Migration {
        version: 5,
        name: "replicas",
        sql: include_str!("../migrations/0005_replicas.sql"),
    },
    Migration {
        version: 6,
        name: "task_script",
        sql: include_str!("../migrations/0006_task_script.sql"),
    },
    Migration {
        version: 7,
        name: "timeouts_and_cancellation",
        sql: include_str!("../migrations/0007_timeouts_and_cancellation.sql"),
    },
    Migration {
        version: 8,
        name: "retries",
        sql: include_str!("../migrations/0008_retries.sql"),
    },
    Migration {
        version: 9,
        name: "tool_policy",
        sql: include_str!("../migrations/0009_tool_policy.sql"),
    },
    Migration {
        version: 10,
        name: "wakeups",
        sql: include_str!("../migrations/0010_wakeups.sql"),
    },
    Migration {
        version: 11,
        name: "membership_leases",
        sql: include_str!("../migrations/0011_membership_leases.sql"),
    },
    Migration {
        version: 12,
        name: "task_events",
        sql: include_str!("../migrations/0012_task_events.sql"),
    },
    Migration {
        version: 13,
        name: "quiet_task_events",
        sql: include_str!("../migrations/0013_quiet_task_events.sql"),
    },
    Migration {
        version: 14,
        name: "row_task_log",
        sql: include_str!("../migrations/0014_row_task_log.sql"),
    },
    Migration {
        version: 15,
        name: "webhooks",
        sql: include_str!("../migrations/0015_webhooks.sql"),
    },
    Migration {
        version: 16,
        name: "chaining",
        sql: include_str!("../migrations/0016_chaining.sql"),
    },
];

const WORKFLOW_COLUMNS: &str = "id, name, agent_id, enabled, trigger, prompt_template, \
    max_concurrency, max_attempts, disabled_reason, created_at, updated_at, task_timeout_ms, retry, tool_policy";
const TASK_COLUMNS: &str = "id, workflow_id, idempotency_key, state, fields, prompt, attempts, \
    output, last_error, created_at, updated_at, dead_letter, not_before, dispatched_at, \
    progress_message, progress_fraction, parent_task_id, chain_depth";

/// A new workflow, validated.
pub struct NewWorkflow {
    pub name: String,
    pub agent_id: Uuid,
    pub enabled: bool,
    pub trigger: Trigger,
    pub prompt_template: String,
    pub max_concurrency: u32,
    pub max_attempts: u32,
    pub task_timeout: std::time::Duration,
    pub retry: crate::model::RetryPolicy,
    pub tool_policy: crate::model::ToolPolicy,
}

/// A task claimed for dispatch.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub prompt: String,
    /// The template rendered for /bin/sh (see `template::render_shell`).
    pub script: String,
    pub fields: TaskFields,
    pub workflow_name: String,
    pub attempts: u32,
    /// How long an attempt may run.
    pub timeout: std::time::Duration,
    pub tool_policy: crate::model::ToolPolicy,
    /// Trace context of the call that created the task.
    pub trace_context: std::collections::HashMap<String, String>,
}

/// What a new task runs: its template rendered as the prompt (text, with
/// the fields' values) and as the script for /bin/sh (fields referred to
/// through the environment), and how long an attempt may take.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub prompt: String,
    pub script: String,
    pub timeout: std::time::Duration,
    /// The workflow's tool policy when the task was created.
    pub tool_policy: crate::model::ToolPolicy,
}

/// A task's reported outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub task_id: String,
    pub attempt: Option<u32>,
    pub end: TaskEnd,
    pub output: String,
}

/// Filters of `list_workflows`.
#[derive(Debug, Default, Clone)]
pub struct WorkflowFilter {
    pub agent_id: Option<Uuid>,
    pub enabled: Option<bool>,
    /// Keyset pagination on id (UUIDv7: creation order).
    pub after: Option<Uuid>,
}

#[derive(Clone)]
pub struct Store {
    pool: DbPool,
    claims: claims::ClaimBatches,
    acquisitions: leases::AcquisitionBatches,
}

impl Store {
    /// Needs a running Tokio runtime: it starts the claim and lease
    /// acquisition batchers.
    pub fn new(pool: DbPool) -> Self {
        Self {
            claims: claims::ClaimBatches::spawn(&pool),
            acquisitions: leases::AcquisitionBatches::spawn(&pool),
            pool,
        }
    }

    // ---- workflows ----

    /// Stores a new workflow, with its webhook secret if it has one.
    pub async fn insert_workflow(
        &self,
        new: &NewWorkflow,
        webhook_secret: Option<&str>,
    ) -> Result<Workflow> {
        let client = self.pool.get().await?;
        let id = Uuid::now_v7();
        let now = SystemTime::now();
        let next_fire = new.trigger.first_fire(now, now);
        let sql = format!(
            "INSERT INTO scheduler.workflows
                 (id, name, agent_id, enabled, trigger, prompt_template, max_concurrency, max_attempts,
                  next_fire_at, created_at, updated_at, task_timeout_ms, retry, tool_policy,
                  webhook_secret)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12, $13, $14)
             RETURNING {WORKFLOW_COLUMNS}"
        );
        let result = client
            .query_one(
                &client.prepare_cached(&sql).await?,
                &[
                    &id,
                    &new.name,
                    &new.agent_id,
                    &new.enabled,
                    &to_json(&new.trigger)?,
                    &new.prompt_template,
                    &to_i32(new.max_concurrency),
                    &to_i32(new.max_attempts),
                    &next_fire,
                    &now,
                    &to_millis(new.task_timeout),
                    &to_json(&new.retry)?,
                    &to_json(&new.tool_policy)?,
                    &webhook_secret,
                ],
            )
            .await;
        match result {
            Ok(row) => workflow_from_row(&row),
            Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(Error::AlreadyExists(format!(
                    "a workflow named {:?} already exists; pick another name",
                    new.name
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    pub async fn get_workflow(&self, id: Uuid) -> Result<Workflow> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM scheduler.workflows WHERE id = $1");
        let row = client
            .query_opt(&client.prepare_cached(&sql).await?, &[&id])
            .await?
            .ok_or_else(|| Error::workflow_not_found(id))?;
        workflow_from_row(&row)
    }

    /// A workflow named by id or name, with its webhook secret: what a
    /// delivery is checked against. None when there is no such workflow.
    pub async fn webhook_target(
        &self,
        reference: &str,
    ) -> Result<Option<(Workflow, Option<String>)>> {
        let client = self.pool.get().await?;
        let row = match Uuid::parse_str(reference) {
            Ok(id) => {
                let sql = format!(
                    "SELECT {WORKFLOW_COLUMNS}, webhook_secret FROM scheduler.workflows WHERE id = $1"
                );
                client
                    .query_opt(&client.prepare_cached(&sql).await?, &[&id])
                    .await?
            }
            Err(_) => {
                let sql = format!(
                    "SELECT {WORKFLOW_COLUMNS}, webhook_secret FROM scheduler.workflows WHERE name = $1"
                );
                client
                    .query_opt(&client.prepare_cached(&sql).await?, &[&reference])
                    .await?
            }
        };
        row.map(|row| Ok((workflow_from_row(&row)?, row.get("webhook_secret"))))
            .transpose()
    }

    /// Enabled workflows triggered by restarts of `agent`: those naming it,
    /// and its own that name no agent.
    pub async fn restart_triggered(&self, agent: Uuid) -> Result<Vec<Workflow>> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS} FROM scheduler.workflows
             WHERE enabled AND trigger->>'kind' = 'agent_restart'
               AND coalesce(trigger->>'agent', agent_id::text) = $1::uuid::text"
        );
        let rows = client
            .query(&client.prepare_cached(&sql).await?, &[&agent])
            .await?;
        rows.iter().map(workflow_from_row).collect()
    }

    /// Replaces a workflow's webhook secret.
    pub async fn set_webhook_secret(&self, id: Uuid, secret: &str) -> Result<Workflow> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE scheduler.workflows SET webhook_secret = $2, updated_at = now()
             WHERE id = $1 RETURNING {WORKFLOW_COLUMNS}"
        );
        let row = client
            .query_opt(&client.prepare_cached(&sql).await?, &[&id, &secret])
            .await?
            .ok_or_else(|| Error::workflow_not_found(id))?;
        workflow_from_row(&row)
    }

    pub async fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        limit: i64,
    ) -> Result<Vec<Workflow>> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS} FROM scheduler.workflows
             WHERE ($1::uuid IS NULL OR agent_id = $1)
               AND ($2::boolean IS NULL OR enabled = $2)
               AND ($3::uuid IS NULL OR id > $3)
             ORDER BY id LIMIT $4"
        );
        client
            .query(
                &client.prepare_cached(&sql).await?,
                &[&filter.agent_id, &filter.enabled, &filter.after, &limit],
            )
            .await?
            .iter()
            .map(workflow_from_row)
            .collect()
    }

    /// Enabled workflows of the given agents (served by the
    /// `(agent_id, enabled)` index).
    pub async fn enabled_workflows_of(&self, agents: &[Uuid]) -> Result<Vec<Workflow>> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS} FROM scheduler.workflows
             WHERE agent_id = ANY($1) AND enabled ORDER BY id"
        );
        client
            .query(&client.prepare_cached(&sql).await?, &[&agents])
            .await?
            .iter()
            .map(workflow_from_row)
            .collect()
    }

    /// Which of `ids` are enabled workflows.
    pub async fn enabled_among(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT id FROM scheduler.workflows WHERE id = ANY($1) AND enabled",
                    )
                    .await?,
                &[&ids],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Writes back an updated workflow. Re-enabling or changing the trigger
    /// reschedules the next tick.
    pub async fn update_workflow(&self, workflow: &Workflow, reschedule: bool) -> Result<Workflow> {
        let client = self.pool.get().await?;
        let now = SystemTime::now();
        let next_fire = if reschedule {
            workflow.trigger.first_fire(workflow.created_at, now)
        } else {
            None
        };
        let sql = format!(
            "UPDATE scheduler.workflows
             SET name = $2, enabled = $3, trigger = $4, prompt_template = $5, max_concurrency = $6,
                 max_attempts = $7, disabled_reason = $8, updated_at = now(),
                 next_fire_at = CASE WHEN $9 THEN $10 ELSE next_fire_at END, task_timeout_ms = $11,
                 retry = $12, tool_policy = $13
             WHERE id = $1 RETURNING {WORKFLOW_COLUMNS}"
        );
        let result = client
            .query_opt(
                &client.prepare_cached(&sql).await?,
                &[
                    &workflow.id,
                    &workflow.name,
                    &workflow.enabled,
                    &to_json(&workflow.trigger)?,
                    &workflow.prompt_template,
                    &to_i32(workflow.max_concurrency),
                    &to_i32(workflow.max_attempts),
                    &workflow.disabled_reason,
                    &reschedule,
                    &next_fire,
                    &to_millis(workflow.task_timeout),
                    &to_json(&workflow.retry)?,
                    &to_json(&workflow.tool_policy)?,
                ],
            )
            .await;
        match result {
            Ok(Some(row)) => workflow_from_row(&row),
            Ok(None) => Err(Error::workflow_not_found(workflow.id)),
            Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(Error::AlreadyExists(format!(
                    "a workflow named {:?} already exists; pick another name",
                    workflow.name
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    pub async fn delete_workflow(&self, id: Uuid) -> Result<()> {
        let client = self.pool.get().await?;
        let deleted = client
            .execute(
                &client
                    .prepare_cached("DELETE FROM scheduler.workflows WHERE id = $1")
                    .await?,
                &[&id],
            )
            .await?;
        if deleted == 0 {
            return Err(Error::workflow_not_found(id));
        }
        Ok(())
    }

    /// Disables every workflow of a deleted agent; returns their ids.
    pub async fn disable_workflows_of(&self, agent: Uuid, reason: &str) -> Result<Vec<Uuid>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client.prepare_cached("UPDATE scheduler.workflows SET enabled = false, disabled_reason = $2, updated_at = now()
                 WHERE agent_id = $1 AND enabled RETURNING id").await?,
                &[&agent, &reason],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    // ---- schedules ----

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

    // ---- tasks ----

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
            "INSERT INTO scheduler.tasks (id, workflow_id, idempotency_key, state, fields, prompt, trace_context, script, timeout_ms, tool_policy)
             VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9)
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
                Err(Error::workflow_not_found(workflow))
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
            .filter_map(|row| finished_from_row(row).transpose())
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
            && let Some(finished) = finished_from_row(row)?
        {
            chains::insert_children(&tx, &[finished]).await?;
        }
        tx.commit().await?;
        Ok(row.map(|row| row.get(0)))
    }

    // ---- event cursor ----

    pub async fn load_cursor(&self) -> Result<u64> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached("SELECT last_seq FROM scheduler.event_cursor")
                    .await?,
                &[],
            )
            .await?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Moves the cursor forward (never back). Replicas share it: each
    /// handles the whole stream, and every effect of an event is either
    /// stored here or re-established by the level pass, so an event one
    /// replica handled counts as handled for all.
    pub async fn save_cursor(&self, seq: u64) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE scheduler.event_cursor SET last_seq = GREATEST(last_seq, $1)",
                    )
                    .await?,
                &[&i64::try_from(seq).unwrap_or(i64::MAX)],
            )
            .await?;
        Ok(())
    }
}

/// A row of a completion that reached a final state, for chaining (None
/// for one that goes back to pending for a retry).
fn finished_from_row(row: &Row) -> Result<Option<chains::Finished>> {
    let Some(state) = TaskState::parse(row.get("final_state")).filter(|s| s.is_final()) else {
        return Ok(None);
    };
    Ok(Some(chains::Finished {
        task_id: row.get("id"),
        workflow_id: row.get("workflow_id"),
        state,
        output: row.get("output"),
        fields: from_json(row.get("fields"))?,
        depth: u32::try_from(row.get::<_, i32>("chain_depth")).unwrap_or(0),
    }))
}

async fn task_by_id(client: &shepherd_platform::db::Client, id: &str) -> Result<Task> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM scheduler.tasks WHERE id = $1");
    let row = client
        .query_opt(&client.prepare_cached(&sql).await?, &[&id])
        .await?
        .ok_or_else(|| Error::NotFound(format!("task {id:?} not found")))?;
    task_from_row(&row)
}

fn workflow_from_row(row: &Row) -> Result<Workflow> {
    Ok(Workflow {
        id: row.get("id"),
        name: row.get("name"),
        agent_id: row.get("agent_id"),
        enabled: row.get("enabled"),
        trigger: from_json(row.get("trigger"))?,
        prompt_template: row.get("prompt_template"),
        max_concurrency: from_i32(row.get("max_concurrency")),
        max_attempts: from_i32(row.get("max_attempts")),
        disabled_reason: row.get("disabled_reason"),
        task_timeout: from_millis(row.get("task_timeout_ms")),
        retry: from_json(row.get("retry"))?,
        tool_policy: from_json(row.get("tool_policy"))?,
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

fn task_from_row(row: &Row) -> Result<Task> {
    let state: &str = row.get("state");
    Ok(Task {
        id: row.get("id"),
        workflow_id: row.get("workflow_id"),
        idempotency_key: row.get("idempotency_key"),
        state: TaskState::parse(state)
            .ok_or_else(|| Error::Internal(format!("unknown task state {state:?}")))?,
        fields: from_json(row.get("fields"))?,
        prompt: row.get("prompt"),
        attempts: from_i32(row.get("attempts")),
        output: row.get("output"),
        last_error: row.get("last_error"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        dead_letter: row.get("dead_letter"),
        not_before: row.get("not_before"),
        progress: (row.get("progress_message"), row.get("progress_fraction")),
        dispatched_at: row.get("dispatched_at"),
        history: Vec::new(),
        parent_task_id: row.get("parent_task_id"),
        chain_depth: u32::try_from(row.get::<_, i32>("chain_depth")).unwrap_or(0),
    })
}
