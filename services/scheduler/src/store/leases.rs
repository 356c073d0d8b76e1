//! Runner leases: which replica runs each workflow, with a fencing term.
//!
//! A lease is a row, not a PostgreSQL advisory lock: a pooled connection can
//! silently drop or share a session lock, while a row with an owner, a term
//! and an expiry means the same thing on every connection.
//!
//! A lease is valid while it is not released and its owner's membership row
//! (`scheduler.replicas`) is unexpired (`scheduler.lease_live`): renewing
//! that one row renews all of a replica's leases, so an idle fleet costs
//! the database one statement per replica, not one per workflow.

use std::collections::HashMap;

use shepherd_platform::db::{self, Client, DbBatcher, DbError, DbPool};
use uuid::Uuid;

use super::Store;
use crate::error::Result;

/// The result of trying to take a workflow's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAcquisition {
    /// This replica holds the lease now, with this term; `in_flight`: the
    /// workflow has DISPATCHED tasks (a new holder settles them first);
    /// `claimable`: it has a pending task due now (without one, a new
    /// holder has nothing to claim until a wake-up says otherwise).
    Acquired {
        term: i64,
        in_flight: bool,
        claimable: bool,
    },
    /// Another live replica holds it.
    HeldBy { owner: String },
    /// The workflow is disabled or gone (perhaps through another replica):
    /// there is nothing to run.
    WorkflowDisabled,
}

/// The acquisition batcher; part of `Store`. Runners of a replica take
/// their leases all at once (an agent restarted with 10,000 workflows), so
/// acquisitions that arrive together share one statement.
#[derive(Clone)]
pub(super) struct AcquisitionBatches {
    acquisitions: DbBatcher<Acquisition, LeaseAcquisition>,
}

impl AcquisitionBatches {
    pub(super) fn spawn(pool: &DbPool) -> Self {
        Self {
            acquisitions: db::batcher(pool, acquire_batch),
        }
    }
}

struct Acquisition {
    workflow: Uuid,
    owner: String,
}

impl Store {
    /// Takes the workflow's lease for `owner` if the workflow is enabled and
    /// the lease is free, released, held by a replica that is gone, or
    /// already `owner`'s (a restarted replica takes its own leases back at
    /// once). Every acquisition bumps the term, fencing out any earlier
    /// holder, including an earlier runner of this same replica.
    pub async fn acquire_lease(&self, workflow: Uuid, owner: &str) -> Result<LeaseAcquisition> {
        let acquisition = Acquisition {
            workflow,
            owner: owner.to_owned(),
        };
        Ok(self.acquisitions.acquisitions.submit(acquisition).await?)
    }

    /// Gives a lease up (expires it now, keeping its term) so that another
    /// replica can take the workflow over without waiting.
    pub async fn release_lease(&self, workflow: Uuid, owner: &str, term: i64) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE scheduler.runner_leases SET expires_at = now()
                         WHERE workflow_id = $1 AND owner = $2 AND term = $3",
                    )
                    .await?,
                &[&workflow, &owner, &term],
            )
            .await?;
        Ok(())
    }

    /// The unexpired leases among `workflows`: (workflow, owner).
    pub async fn lease_holders(&self, workflows: &[Uuid]) -> Result<Vec<(Uuid, String)>> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                &client
                    .prepare_cached(
                        "SELECT workflow_id, owner FROM scheduler.runner_leases
                         WHERE workflow_id = ANY($1) AND scheduler.lease_live(owner, expires_at)",
                    )
                    .await?,
                &[&workflows],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }
}

/// Acquires a batch: one upsert per round (a workflow at most once per
/// round), then one read of who holds what was not acquired.
async fn acquire_batch(
    client: Client,
    items: Vec<Acquisition>,
) -> Result<Vec<LeaseAcquisition>, DbError> {
    let upsert = client
        .prepare_cached(
            "INSERT INTO scheduler.runner_leases (workflow_id, owner, term, expires_at)
             SELECT w.id, r.owner, 1, 'infinity'
             FROM UNNEST($1::uuid[], $2::text[]) AS r(workflow_id, owner)
             JOIN scheduler.workflows w ON w.id = r.workflow_id AND w.enabled
             ORDER BY w.id
             ON CONFLICT (workflow_id) DO UPDATE
             SET owner = EXCLUDED.owner, term = runner_leases.term + 1,
                 expires_at = EXCLUDED.expires_at
             WHERE runner_leases.owner = EXCLUDED.owner
                OR NOT scheduler.lease_live(runner_leases.owner, runner_leases.expires_at)
             RETURNING workflow_id, term, EXISTS (
                 SELECT 1 FROM scheduler.tasks t
                 WHERE t.workflow_id = runner_leases.workflow_id AND t.state = 'dispatched'
             ), EXISTS (
                 SELECT 1 FROM scheduler.tasks t
                 WHERE t.workflow_id = runner_leases.workflow_id AND t.state = 'pending'
                   AND (t.not_before IS NULL OR t.not_before <= now()))",
        )
        .await?;
    let holders = client
        .prepare_cached(
            "SELECT w.id, l.owner FROM scheduler.workflows w
             LEFT JOIN scheduler.runner_leases l ON l.workflow_id = w.id
             WHERE w.id = ANY($1) AND w.enabled",
        )
        .await?;
    let mut results: Vec<Option<LeaseAcquisition>> = vec![None; items.len()];
    for round in shepherd_platform::batch::rounds_of_distinct(&items, |item| item.workflow) {
        let workflows: Vec<Uuid> = round.iter().map(|&i| items[i].workflow).collect();
        let owners: Vec<&str> = round.iter().map(|&i| items[i].owner.as_str()).collect();
        let mut acquired: HashMap<Uuid, LeaseAcquisition> = client
            .query(&upsert, &[&workflows, &owners])
            .await?
            .iter()
            .map(|row| {
                let acquired = LeaseAcquisition::Acquired {
                    term: row.get(1),
                    in_flight: row.get(2),
                    claimable: row.get(3),
                };
                (row.get(0), acquired)
            })
            .collect();
        let missed: Vec<Uuid> = workflows
            .iter()
            .filter(|workflow| !acquired.contains_key(workflow))
            .copied()
            .collect();
        let mut held: HashMap<Uuid, Option<String>> = if missed.is_empty() {
            HashMap::new()
        } else {
            client
                .query(&holders, &[&missed])
                .await?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect()
        };
        for &i in &round {
            let workflow = items[i].workflow;
            results[i] = Some(match acquired.remove(&workflow) {
                Some(acquired) => acquired,
                None => match held.remove(&workflow) {
                    None => LeaseAcquisition::WorkflowDisabled,
                    // No lease row: it changed hands just now.
                    Some(owner) => LeaseAcquisition::HeldBy {
                        owner: owner.unwrap_or_default(),
                    },
                },
            });
        }
    }
    Ok(results
        .into_iter()
        .map(|result| result.unwrap_or(LeaseAcquisition::WorkflowDisabled))
        .collect())
}
