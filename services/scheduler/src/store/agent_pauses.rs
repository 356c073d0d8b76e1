//! Paused agents. The rows are the truth; migration 0022's triggers hold
//! (and release) the agent's workflows, so every claim skips them.

use super::*;
use crate::model::AgentPause;

impl Store {
    /// Pauses dispatch to the agent (or replaces its pause's reason).
    pub async fn pause_agent(&self, agent: Uuid, by: &str, reason: &str) -> Result<AgentPause> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "INSERT INTO scheduler.agent_pauses (agent_id, paused_by, reason)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (agent_id) DO UPDATE SET paused_by = $2, reason = $3
                         RETURNING agent_id, paused_at, paused_by, reason",
                    )
                    .await?,
                &[&agent, &by, &reason],
            )
            .await?;
        Ok(agent_pause(&row))
    }

    /// Resumes dispatch to the agent; false if it was not paused.
    pub async fn resume_agent(&self, agent: Uuid) -> Result<bool> {
        let client = self.pool.get().await?;
        let deleted = client
            .execute(
                &client
                    .prepare_cached("DELETE FROM scheduler.agent_pauses WHERE agent_id = $1")
                    .await?,
                &[&agent],
            )
            .await?;
        Ok(deleted == 1)
    }

    /// The agent's pause, if it is paused.
    pub async fn agent_pause(&self, agent: Uuid) -> Result<Option<AgentPause>> {
        Ok(self.agent_pauses(Some(agent)).await?.pop())
    }

    /// Every paused agent (or the one asked for), the longest paused first.
    pub async fn agent_pauses(&self, agent: Option<Uuid>) -> Result<Vec<AgentPause>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT agent_id, paused_at, paused_by, reason FROM scheduler.agent_pauses
                         WHERE $1::uuid IS NULL OR agent_id = $1 ORDER BY paused_at, agent_id",
                    )
                    .await?,
                &[&agent],
            )
            .await?;
        Ok(rows.iter().map(agent_pause).collect())
    }
}

fn agent_pause(row: &Row) -> AgentPause {
    AgentPause {
        agent_id: row.get(0),
        since: row.get(1),
        by: row.get(2),
        reason: row.get(3),
    }
}
