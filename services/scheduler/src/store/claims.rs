//! Claiming pending tasks for dispatch.
//!
//! Every runner claims after each wake-up (a trigger, a finished task), so
//! a busy scheduler claims thousands of times a second. Claims go through a
//! group-commit batcher: the runners that claim at the same moment share
//! one statement.

use std::collections::HashMap;
use std::sync::Arc;

use shepherd_platform::batch::{BatchLimits, Batcher};
use shepherd_platform::columns::from_i32;
use shepherd_platform::db::{DbError, DbPool};
use uuid::Uuid;

use super::{Claimed, Store};
use crate::error::Result;

/// The claim batcher; part of `Store`.
#[derive(Clone)]
pub(super) struct ClaimBatches {
    claims: Batcher<Uuid, Vec<Claimed>, Arc<DbError>>,
}

impl ClaimBatches {
    pub(super) fn spawn(pool: DbPool) -> Self {
        Self {
            claims: Batcher::spawn(BatchLimits::default(), move |workflows| {
                claim_batch(pool.clone(), workflows)
            }),
        }
    }
}

impl Store {
    /// Takes the workflow's oldest pending tasks for dispatch, oldest first,
    /// as many as its max_concurrency leaves room for.
    /// `FOR UPDATE SKIP LOCKED`: two claimers never take the same task.
    pub async fn claim(&self, workflow: Uuid) -> Result<Vec<Claimed>> {
        Ok(self.claims.claims.submit(workflow).await?)
    }
}

/// Claims for several workflows in one statement: each workflow's room is
/// computed and filled on its own (a lateral subquery per workflow).
async fn claim_batch(
    pool: DbPool,
    workflows: Vec<Uuid>,
) -> Result<Vec<Vec<Claimed>>, Arc<DbError>> {
    let client = pool.get().await.map_err(DbError::shared)?;
    let statement = client
        .prepare_cached(
            "WITH room AS (
                 SELECT w.id AS workflow_id, GREATEST(w.max_concurrency - (
                     SELECT count(*) FROM scheduler.tasks d
                     WHERE d.workflow_id = w.id AND d.state = 'dispatched'), 0) AS n
                 FROM scheduler.workflows w WHERE w.id = ANY($1)
             ), next AS (
                 SELECT c.id, c.seq FROM room, LATERAL (
                     SELECT t.id, t.seq FROM scheduler.tasks t
                     WHERE t.workflow_id = room.workflow_id AND t.state = 'pending'
                     ORDER BY t.seq LIMIT room.n FOR UPDATE SKIP LOCKED
                 ) c
             )
             UPDATE scheduler.tasks t SET state = 'dispatched', attempts = t.attempts + 1, updated_at = now()
             FROM next WHERE t.id = next.id
             RETURNING t.workflow_id, next.seq, t.id, t.prompt, t.attempts, t.trace_context",
        )
        .await
        .map_err(DbError::shared)?;
    let rows = client
        .query(&statement, &[&workflows])
        .await
        .map_err(DbError::shared)?;
    let mut claimed: HashMap<Uuid, Vec<(i64, Claimed)>> = HashMap::new();
    for row in &rows {
        let task = Claimed {
            id: row.get(2),
            prompt: row.get(3),
            attempts: from_i32(row.get(4)),
            trace_context: serde_json::from_value(row.get(5)).unwrap_or_default(),
        };
        claimed
            .entry(row.get(0))
            .or_default()
            .push((row.get(1), task));
    }
    // A workflow claimed twice in one batch: the first claim gets its tasks.
    Ok(workflows
        .iter()
        .map(|workflow| {
            let mut tasks = claimed.remove(workflow).unwrap_or_default();
            tasks.sort_by_key(|(seq, _)| *seq);
            tasks.into_iter().map(|(_, task)| task).collect()
        })
        .collect())
}
