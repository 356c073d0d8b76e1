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

use uuid::Uuid;

use super::Store;
use crate::error::Result;

/// The result of trying to take a workflow's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAcquisition {
    /// This replica holds the lease now, with this term; `in_flight`: the
    /// workflow has DISPATCHED tasks (a new holder settles them first).
    Acquired { term: i64, in_flight: bool },
    /// Another live replica holds it.
    HeldBy { owner: String },
    /// The workflow is disabled or gone (perhaps through another replica):
    /// there is nothing to run.
    WorkflowDisabled,
}

impl Store {
    /// Takes the workflow's lease for `owner` if the workflow is enabled and
    /// the lease is free, released, held by a replica that is gone, or
    /// already `owner`'s (a restarted replica takes its own leases back at
    /// once). Every acquisition bumps the term, fencing out any earlier
    /// holder, including an earlier runner of this same replica.
    pub async fn acquire_lease(&self, workflow: Uuid, owner: &str) -> Result<LeaseAcquisition> {
        let client = self.pool.get().await?;
        let acquired = client
            .query_opt(
                &client
                    .prepare_cached(
                        "INSERT INTO scheduler.runner_leases (workflow_id, owner, term, expires_at)
                         SELECT w.id, $2, 1, 'infinity'
                         FROM scheduler.workflows w WHERE w.id = $1 AND w.enabled
                         ON CONFLICT (workflow_id) DO UPDATE
                         SET owner = EXCLUDED.owner, term = runner_leases.term + 1,
                             expires_at = EXCLUDED.expires_at
                         WHERE runner_leases.owner = EXCLUDED.owner
                            OR NOT scheduler.lease_live(runner_leases.owner, runner_leases.expires_at)
                         RETURNING term, EXISTS (
                             SELECT 1 FROM scheduler.tasks t
                             WHERE t.workflow_id = $1 AND t.state = 'dispatched')",
                    )
                    .await?,
                &[&workflow, &owner],
            )
            .await?;
        if let Some(row) = acquired {
            return Ok(LeaseAcquisition::Acquired {
                term: row.get(0),
                in_flight: row.get(1),
            });
        }
        let holder = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT l.owner FROM scheduler.workflows w
                         LEFT JOIN scheduler.runner_leases l ON l.workflow_id = w.id
                         WHERE w.id = $1 AND w.enabled",
                    )
                    .await?,
                &[&workflow],
            )
            .await?;
        Ok(match holder {
            None => LeaseAcquisition::WorkflowDisabled,
            Some(row) => LeaseAcquisition::HeldBy {
                // No lease row: it changed hands just now.
                owner: row.get::<_, Option<String>>(0).unwrap_or_default(),
            },
        })
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
