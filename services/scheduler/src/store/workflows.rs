//! Workflows: their rows, lookups and the webhook secret.

use super::*;

impl Store {
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
                  webhook_secret, concurrency_keys)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12, $13, $14, $15)
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
                    &new.concurrency_keys,
                ],
            )
            .await;
        match result {
            Ok(row) => workflow_from_row(&row),
            Err(err) if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                Err(unknown_key(&new.concurrency_keys))
            }
            Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(Error::already_exists(format!(
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
            .ok_or_else(|| Error::WorkflowNotFound(id))?;
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
            .ok_or_else(|| Error::WorkflowNotFound(id))?;
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

    /// What `ListRunners` shows of every workflow (of one agent), in id
    /// order: only the four columns it needs, in one statement, so that a
    /// console polling a fleet of 10,000 workflows does not read and parse
    /// every workflow's definition each time.
    pub async fn runner_workflows(&self, agent: Option<Uuid>) -> Result<Vec<RunnerWorkflow>> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT id, agent_id, enabled, updated_at FROM scheduler.workflows
                 WHERE ($1::uuid IS NULL OR agent_id = $1) ORDER BY id",
            )
            .await?;
        Ok(client
            .query(&statement, &[&agent])
            .await?
            .iter()
            .map(|row| RunnerWorkflow {
                id: row.get(0),
                agent_id: row.get(1),
                enabled: row.get(2),
                updated_at: row.get(3),
            })
            .collect())
    }

    /// Enabled workflows of the given agents, as `(workflow, agent)` (served
    /// by the `(agent_id, enabled)` index). Only the two ids: this is what
    /// starting runners needs, and an agent restarted with 10,000 workflows
    /// (or a level pass over a whole fleet) should not read and parse every
    /// workflow's definition first (measured: 87 ms for 10,000 full rows).
    pub async fn enabled_workflows_of(&self, agents: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT id, agent_id FROM scheduler.workflows
                 WHERE agent_id = ANY($1) AND enabled ORDER BY id",
            )
            .await?;
        Ok(client
            .query(&statement, &[&agents])
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
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
                 retry = $12, tool_policy = $13, concurrency_keys = $14
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
                    &workflow.concurrency_keys,
                ],
            )
            .await;
        match result {
            Ok(Some(row)) => workflow_from_row(&row),
            Err(err) if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                Err(unknown_key(&workflow.concurrency_keys))
            }
            Ok(None) => Err(Error::WorkflowNotFound(workflow.id)),
            Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(Error::already_exists(format!(
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
            return Err(Error::WorkflowNotFound(id));
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
}

impl Store {
    /// Pauses the workflow (or changes its pause's reason and mode).
    pub async fn pause_workflow(
        &self,
        id: Uuid,
        by: &str,
        reason: &str,
        mode: crate::model::WhilePaused,
    ) -> Result<Workflow> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE scheduler.workflows
             SET paused_at = coalesce(paused_at, now()), paused_by = $2, pause_reason = $3,
                 while_paused = $4, updated_at = now()
             WHERE id = $1 RETURNING {WORKFLOW_COLUMNS}"
        );
        let row = client
            .query_opt(
                &client.prepare_cached(&sql).await?,
                &[&id, &by, &reason, &mode.as_str()],
            )
            .await?
            .ok_or_else(|| Error::WorkflowNotFound(id))?;
        workflow_from_row(&row)
    }

    /// Resumes the workflow (a no-op if it is not paused).
    pub async fn resume_workflow(&self, id: Uuid) -> Result<Workflow> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE scheduler.workflows
             SET paused_at = NULL, paused_by = '', pause_reason = '', updated_at = now()
             WHERE id = $1 RETURNING {WORKFLOW_COLUMNS}"
        );
        let row = client
            .query_opt(&client.prepare_cached(&sql).await?, &[&id])
            .await?
            .ok_or_else(|| Error::WorkflowNotFound(id))?;
        workflow_from_row(&row)
    }
}

/// A workflow named a key nobody defined (the foreign key refused it).
fn unknown_key(keys: &[String]) -> Error {
    Error::invalid(
        "workflow.concurrency_keys",
        format!(
            "a key of {keys:?} is not defined; define it first (PutConcurrencyKey, `shepherd keys put`)"
        ),
    )
}

/// A workflow as its runner's view needs it (see `runner_workflows`).
#[derive(Debug, Clone)]
pub struct RunnerWorkflow {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub enabled: bool,
    /// Since when a never-started runner has been stopped.
    pub updated_at: SystemTime,
}

impl From<&Workflow> for RunnerWorkflow {
    fn from(workflow: &Workflow) -> Self {
        Self {
            id: workflow.id,
            agent_id: workflow.agent_id,
            enabled: workflow.enabled,
            updated_at: workflow.updated_at,
        }
    }
}
