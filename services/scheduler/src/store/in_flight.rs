//! Tasks in flight (DISPATCHED): the ones a replica must settle against the
//! agent-manager after a crash, a takeover or on its level pass, and how
//! long each workflow's oldest one has been out.

use std::time::Duration;

use shepherd_platform::columns::{from_i32, from_millis};
use uuid::Uuid;

use super::Store;
use crate::error::Result;
use crate::model::TaskFields;

/// Most in-flight tasks one settle pass looks at; the next pass takes the
/// rest.
const MAX_PER_PASS: i64 = 10_000;

/// A task in flight.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub id: String,
    pub workflow_id: Uuid,
    pub workflow_name: String,
    pub agent_id: Uuid,
    pub prompt: String,
    pub script: String,
    pub fields: TaskFields,
    pub attempts: u32,
    pub timeout: Duration,
    pub tool_policy: crate::model::ToolPolicy,
}

/// Which in-flight tasks a replica settles: those of workflows whose lease
/// it holds or that nobody holds (expired, released, never taken), so a
/// task is never orphaned by a replica that died, and a live replica's
/// tasks are left to it.
#[derive(Debug, Clone)]
pub struct InFlightScope {
    /// This replica's name as a lease owner.
    pub owner: String,
    /// Only this workflow's tasks (a runner that just took its lease).
    pub workflow: Option<Uuid>,
    /// Only the tasks of this agent's workflows (the agent restarted).
    pub agent: Option<Uuid>,
    /// Only tasks dispatched at least this long ago (skip the ones being
    /// dispatched right now; settling them would be safe, only wasted).
    pub min_age: Duration,
}

/// A workflow's oldest task in flight.
#[derive(Debug, Clone)]
pub struct OldestInFlight {
    pub workflow_id: Uuid,
    pub task_id: String,
    pub age: Duration,
}

impl Store {
    /// The in-flight tasks in `scope`, oldest first.
    pub async fn in_flight(&self, scope: &InFlightScope) -> Result<Vec<InFlight>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT t.id, t.workflow_id, w.agent_id, t.prompt, t.attempts, w.name, t.script, t.fields, t.timeout_ms, t.tool_policy
                         FROM scheduler.tasks t
                         JOIN scheduler.workflows w ON w.id = t.workflow_id
                         LEFT JOIN scheduler.runner_leases l ON l.workflow_id = t.workflow_id
                         WHERE t.state = 'dispatched'
                           AND t.updated_at <= now() - make_interval(secs => $2)
                           AND ($3::uuid IS NULL OR t.workflow_id = $3)
                           AND ($5::uuid IS NULL OR w.agent_id = $5)
                           AND (l.workflow_id IS NULL OR l.owner = $1
                                OR NOT scheduler.lease_live(l.owner, l.expires_at))
                         ORDER BY t.updated_at LIMIT $4",
                    )
                    .await?,
                &[
                    &scope.owner,
                    &scope.min_age.as_secs_f64(),
                    &scope.workflow,
                    &MAX_PER_PASS,
                    &scope.agent,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| InFlight {
                id: row.get(0),
                workflow_id: row.get(1),
                agent_id: row.get(2),
                prompt: row.get(3),
                attempts: from_i32(row.get(4)),
                workflow_name: row.get(5),
                script: row.get(6),
                fields: serde_json::from_value(row.get(7)).unwrap_or_default(),
                timeout: from_millis(row.get(8)),
                tool_policy: serde_json::from_value(row.get(9)).unwrap_or_default(),
            })
            .collect())
    }

    /// Each workflow's oldest task in flight (for STALLED runners and the
    /// oldest-in-flight metric).
    pub async fn oldest_in_flight(&self) -> Result<Vec<OldestInFlight>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT DISTINCT ON (workflow_id) workflow_id, id,
                                GREATEST(extract(epoch FROM now() - updated_at), 0)::float8
                         FROM scheduler.tasks WHERE state = 'dispatched'
                         ORDER BY workflow_id, updated_at",
                    )
                    .await?,
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| OldestInFlight {
                workflow_id: row.get(0),
                task_id: row.get(1),
                age: Duration::from_secs_f64(row.get::<_, f64>(2).max(0.0)),
            })
            .collect())
    }
}
