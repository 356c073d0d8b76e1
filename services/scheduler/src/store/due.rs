//! What the wake-up safety net asks: which workflows have work claimable
//! now, and when the next delayed task becomes claimable.

use std::time::SystemTime;

use uuid::Uuid;

use super::Store;
use crate::error::Result;

impl Store {
    /// Of `workflows`, those with a pending task claimable now. One query
    /// for all of them (the safety poll), never one per runner.
    pub async fn workflows_with_due_tasks(&self, workflows: &[Uuid]) -> Result<Vec<Uuid>> {
        if workflows.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT DISTINCT workflow_id FROM scheduler.tasks
                         WHERE state = 'pending' AND workflow_id = ANY($1)
                           AND (not_before IS NULL OR not_before <= now())",
                    )
                    .await?,
                &[&workflows],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// When the earliest pending task that is not claimable yet becomes so.
    pub async fn next_due(&self) -> Result<Option<SystemTime>> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT min(not_before) FROM scheduler.tasks
                         WHERE state = 'pending' AND not_before > now()",
                    )
                    .await?,
                &[],
            )
            .await?;
        Ok(row.get(0))
    }
}
