//! Runner leases: which replica runs each workflow, with a fencing term.
//!
//! A lease is a row, not a PostgreSQL advisory lock: a pooled connection can
//! silently drop or share a session lock, while a row with an owner, a term
//! and an expiry means the same thing on every connection.

use std::time::Duration;

use shepherd_platform::db::{self, Client, DbBatcher, DbError, DbPool};
use uuid::Uuid;

use super::Store;
use crate::error::Result;

/// The result of trying to take a workflow's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAcquisition {
    /// This replica holds the lease now, with this term; `in_flight`: the
    /// workflow has DISPATCHED tasks (a new holder settles them first).
    Acquired { term: i64, in_flight: bool },
    /// Another replica holds it for about `remaining` more.
    HeldBy { owner: String, remaining: Duration },
    /// The workflow is disabled or gone (perhaps through another replica):
    /// there is nothing to run.
    WorkflowDisabled,
}

/// One lease to extend.
#[derive(Debug, Clone)]
pub struct LeaseRenewal {
    pub workflow: Uuid,
    pub owner: String,
    pub term: i64,
    pub ttl: Duration,
}

/// Renewals of every runner of a replica share statements; part of `Store`.
#[derive(Clone)]
pub(super) struct RenewalBatches {
    renewals: DbBatcher<LeaseRenewal, bool>,
}

impl RenewalBatches {
    pub(super) fn spawn(pool: &DbPool) -> Self {
        Self {
            renewals: db::batcher(pool, renew_batch),
        }
    }
}

impl Store {
    /// Takes the workflow's lease for `owner` if the workflow is enabled and
    /// the lease is free, expired, or already `owner`'s (a restarted replica
    /// takes its own leases back at once). Every acquisition bumps the term,
    /// fencing out any earlier holder, including an earlier runner of this
    /// same replica.
    pub async fn acquire_lease(
        &self,
        workflow: Uuid,
        owner: &str,
        ttl: Duration,
    ) -> Result<LeaseAcquisition> {
        let client = self.pool.get().await?;
        let acquired = client
            .query_opt(
                &client
                    .prepare_cached(
                        "INSERT INTO scheduler.runner_leases (workflow_id, owner, term, expires_at)
                         SELECT w.id, $2, 1, now() + make_interval(secs => $3)
                         FROM scheduler.workflows w WHERE w.id = $1 AND w.enabled
                         ON CONFLICT (workflow_id) DO UPDATE
                         SET owner = EXCLUDED.owner, term = runner_leases.term + 1,
                             expires_at = EXCLUDED.expires_at
                         WHERE runner_leases.expires_at <= now() OR runner_leases.owner = EXCLUDED.owner
                         RETURNING term, EXISTS (
                             SELECT 1 FROM scheduler.tasks t
                             WHERE t.workflow_id = $1 AND t.state = 'dispatched')",
                    )
                    .await?,
                &[&workflow, &owner, &ttl.as_secs_f64()],
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
                        "SELECT l.owner, GREATEST(extract(epoch FROM l.expires_at - now()), 0)::float8
                         FROM scheduler.workflows w
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
                // No lease row: it changed hands just now; try again soon.
                owner: row.get::<_, Option<String>>(0).unwrap_or_default(),
                remaining: Duration::from_secs_f64(row.get::<_, Option<f64>>(1).unwrap_or(0.0)),
            },
        })
    }

    /// Extends a held lease; false if it was lost (taken over: another term).
    pub async fn renew_lease(&self, renewal: LeaseRenewal) -> Result<bool> {
        Ok(self.renewals.renewals.submit(renewal).await?)
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
                         WHERE workflow_id = ANY($1) AND expires_at > now()",
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

async fn renew_batch(
    client: Client,
    mut renewals: Vec<LeaseRenewal>,
) -> Result<Vec<bool>, DbError> {
    // Rows in key order, so that concurrent batches cannot deadlock.
    let order: Vec<usize> = {
        let mut order: Vec<usize> = (0..renewals.len()).collect();
        order.sort_by_key(|&i| renewals[i].workflow);
        order
    };
    let workflows: Vec<Uuid> = order.iter().map(|&i| renewals[i].workflow).collect();
    let owners: Vec<&str> = order.iter().map(|&i| renewals[i].owner.as_str()).collect();
    let terms: Vec<i64> = order.iter().map(|&i| renewals[i].term).collect();
    let ttls: Vec<f64> = order
        .iter()
        .map(|&i| renewals[i].ttl.as_secs_f64())
        .collect();
    let statement = client
        .prepare_cached(
            "UPDATE scheduler.runner_leases l SET expires_at = now() + make_interval(secs => v.ttl)
             FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::float8[]) AS v(workflow_id, owner, term, ttl)
             WHERE l.workflow_id = v.workflow_id AND l.owner = v.owner AND l.term = v.term
             RETURNING l.workflow_id, l.term",
        )
        .await?;
    let renewed: std::collections::HashSet<(Uuid, i64)> = client
        .query(&statement, &[&workflows, &owners, &terms, &ttls])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(renewals
        .drain(..)
        .map(|renewal| renewed.contains(&(renewal.workflow, renewal.term)))
        .collect())
}
