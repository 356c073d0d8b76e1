//! Claiming pending tasks for dispatch.
//!
//! Every runner claims after each wake-up (a trigger, a finished task), so
//! a busy scheduler claims thousands of times a second. Claims go through a
//! group-commit batcher: the runners that claim at the same moment share
//! one statement.
//!
//! Claims are fenced: a workflow's tasks are taken only while the claimer
//! holds its runner lease with the given term (and its membership row, which
//! keeps the lease alive, is unexpired). The lease row is read
//! `FOR SHARE`, so a takeover (which updates it) waits for a claim in
//! progress, and a claim that waited for a takeover sees the new term and
//! takes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use shepherd_platform::db::{self, Client, DbBatcher, DbError, DbPool};
use uuid::Uuid;

pub use super::claim_rows::ClaimRequest;
use super::claim_rows::claimed_from_row;
use super::keyed_claims::{KeyedClaim, claim_keyed};
use super::{Claimed, Store};
use crate::error::Result;

/// The claim batcher; part of `Store`.
#[derive(Clone)]
pub(super) struct ClaimBatches {
    claims: DbBatcher<ClaimRequest, Claim>,
}

/// What a claim took.
#[derive(Debug, Default)]
pub struct Claim {
    /// The tasks to dispatch, oldest first.
    pub tasks: Vec<Claimed>,
    /// The workflow waits for a slot of one of its concurrency keys: a
    /// slot freeing up wakes it (it must say when it stops claiming:
    /// `Store::stop_waiting_for_keys`).
    pub waiting_for_key: bool,
    /// A key's rate holds it back: try again then (no wake-up comes).
    pub retry_in: Option<std::time::Duration>,
}

impl ClaimBatches {
    pub(super) fn spawn(pool: &DbPool) -> Self {
        let keyed = Arc::new(KeyedWorkflows::default());
        Self {
            claims: db::batcher(pool, move |client, requests| {
                claim_batch(client, requests, keyed.clone())
            }),
        }
    }
}

/// The workflows last seen naming concurrency keys. Only a routing hint:
/// their claims skip the plain statement (which would only say they are
/// keyed) and go straight to the keyed transaction, sent in the same
/// round trip as the plain statement of the others. The keyed claim is
/// right for any workflow (one without keys needs no slot), and the plain
/// statement never claims for a keyed one, so a stale hint costs a round
/// trip, never a wrong claim.
#[derive(Default)]
struct KeyedWorkflows(Mutex<HashSet<Uuid>>);

impl KeyedWorkflows {
    /// Beyond this many the hint starts over (workflows deleted while
    /// hinted are never seen again to be forgotten).
    const MOST: usize = 100_000;

    fn contains(&self, workflow: &Uuid) -> bool {
        self.lock().contains(workflow)
    }

    fn learn(&self, keyed: &[Uuid], keyless: &[Uuid]) {
        let mut set = self.lock();
        if set.len() + keyed.len() > Self::MOST {
            set.clear();
        }
        set.extend(keyed.iter().copied());
        for workflow in keyless {
            set.remove(workflow);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        // A set of hints: one a panicking holder left behind is still good.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store {
    /// Takes the workflow's oldest pending tasks for dispatch, oldest first,
    /// as many as its max_concurrency leaves room for; nothing unless the
    /// workflow is enabled and the lease `(owner, term)` is current and
    /// unexpired.
    /// `FOR UPDATE SKIP LOCKED`: two claimers never take the same task.
    ///
    /// A workflow that names concurrency keys is claimed for under the
    /// keys' locks (see `keyed_claims`): a task starts only with a slot of
    /// every key, shared fairly among the workflows that want one.
    pub async fn claim(&self, request: ClaimRequest) -> Result<Claim> {
        Ok(self.claims.claims.submit(request).await?)
    }
}

/// Claims for a batch: the workflows known to be keyed in the keyed
/// transaction (`claim_keyed`), the others in one plain statement
/// (`claim_plain`), both sent at once. A workflow the plain statement finds
/// keyed is claimed for in a second keyed transaction.
///
/// A claim that fails or panics half-way takes its connection out of the
/// pool and closes it: the server rolls back the keyed transaction it may
/// have left open, and no one is handed a connection in the middle of it.
async fn claim_batch(
    client: Client,
    requests: Vec<ClaimRequest>,
    keyed: Arc<KeyedWorkflows>,
) -> Result<Vec<Claim>, DbError> {
    use futures_util::FutureExt;
    let claimed = std::panic::AssertUnwindSafe(claim_all(&client, &requests, &keyed))
        .catch_unwind()
        .await;
    match claimed {
        // Done (the keyed transactions committed): back to the pool.
        Ok(Ok(claims)) => Ok(claims),
        Ok(Err(err)) => {
            db::discard(client);
            Err(err)
        }
        Err(panic) => {
            db::discard(client);
            std::panic::resume_unwind(panic)
        }
    }
}

async fn claim_all(
    client: &Client,
    requests: &[ClaimRequest],
    keyed: &KeyedWorkflows,
) -> Result<Vec<Claim>, DbError> {
    let (hinted, others): (Vec<&ClaimRequest>, Vec<&ClaimRequest>) = requests
        .iter()
        .partition(|request| keyed.contains(&request.workflow));
    // Pipelined on the connection: the plain statement runs on its own
    // (autocommit) before the keyed transaction's BEGIN.
    let (plain, mut keyed_claims) =
        futures_util::try_join!(claim_plain(client, &others), claim_keyed(client, &hinted))?;
    if !plain.keyed.is_empty() {
        let late: Vec<&ClaimRequest> = others
            .iter()
            .filter(|request| plain.keyed.contains(&request.workflow))
            .copied()
            .collect();
        keyed_claims.extend(claim_keyed(client, &late).await?);
    }
    let keyless: Vec<Uuid> = keyed_claims
        .iter()
        .filter(|(_, claim)| claim.keyless)
        .map(|(workflow, _)| *workflow)
        .collect();
    keyed.learn(&plain.keyed, &keyless);
    let mut claimed = plain.claimed;
    // A workflow claimed twice in one batch: the first claim gets its tasks.
    Ok(requests
        .iter()
        .map(|request| {
            if let Some(claim) = keyed_claims.remove(&request.workflow) {
                return Claim::from(claim);
            }
            let mut tasks = claimed.remove(&request.workflow).unwrap_or_default();
            tasks.sort_by_key(|(seq, _)| *seq);
            Claim {
                tasks: tasks.into_iter().map(|(_, task)| task).collect(),
                waiting_for_key: false,
                retry_in: None,
            }
        })
        .collect())
}

impl From<KeyedClaim> for Claim {
    fn from(claim: KeyedClaim) -> Self {
        Self {
            tasks: claim.tasks,
            waiting_for_key: claim.waiting,
            retry_in: claim.retry_in,
        }
    }
}

/// What the plain statement took, per workflow (with each task's
/// sequence), and which of the requested workflows it found keyed.
#[derive(Default)]
struct PlainClaims {
    claimed: HashMap<Uuid, Vec<(i64, Claimed)>>,
    keyed: Vec<Uuid>,
}

/// Claims for several workflows in one statement: each workflow's room is
/// computed and filled on its own (a lateral subquery per workflow).
///
/// Only workflows with room and a claimable task lock their lease: locking
/// a row writes it (a WAL record and a dirtied page per lease), and many
/// claims find nothing: most of a fleet coming back (10,000 runners of a
/// restarted agent), and a busy workflow's runner woken while it has no
/// room (a trigger while its tasks run). A task that becomes claimable
/// after the check, or room that frees up, wakes the runner again.
///
/// The room counts dispatched tasks only up to max_concurrency: a bounded
/// index scan, which also marks the index entries of tasks that left the
/// dispatched state as dead as it passes them. Counted unbounded, the
/// planner took a bitmap scan that visited every task the workflow ever
/// dispatched (until a vacuum) on every claim.
///
/// Keyed workflows are left out (the statement tells which they are).
async fn claim_plain(client: &Client, requests: &[&ClaimRequest]) -> Result<PlainClaims, DbError> {
    if requests.is_empty() {
        return Ok(PlainClaims::default());
    }
    let statement = client
        .prepare_cached(
            "WITH request AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[]) AS r(workflow_id, owner, term)
             ), room AS (
                 SELECT w.id AS workflow_id, w.name AS workflow_name,
                        w.max_concurrency - busy.n AS n
                 FROM request r
                 JOIN scheduler.runner_leases l ON l.workflow_id = r.workflow_id
                      AND l.owner = r.owner AND l.term = r.term AND l.expires_at > now()
                 JOIN scheduler.replicas p ON p.id = r.owner AND p.expires_at > now()
                 JOIN scheduler.workflows w ON w.id = r.workflow_id AND w.enabled
                      AND w.paused_at IS NULL AND cardinality(w.holds) = 0 AND cardinality(w.concurrency_keys) = 0
                 CROSS JOIN LATERAL (
                     SELECT count(*) AS n FROM (
                         SELECT FROM scheduler.tasks d
                         WHERE d.workflow_id = w.id AND d.state = 'dispatched'
                         LIMIT w.max_concurrency) dispatched) busy
                 WHERE busy.n < w.max_concurrency
                   AND EXISTS (
                     SELECT FROM scheduler.tasks e
                     WHERE e.workflow_id = r.workflow_id AND e.state = 'pending'
                       AND (e.not_before IS NULL OR e.not_before <= now()))
                 FOR SHARE OF l
             ), next AS (
                 SELECT c.id, c.seq, room.workflow_name FROM room, LATERAL (
                     SELECT t.id, t.seq FROM scheduler.tasks t
                     WHERE t.workflow_id = room.workflow_id AND t.state = 'pending'
                       AND (t.not_before IS NULL OR t.not_before <= now())
                     ORDER BY t.priority DESC, t.seq LIMIT room.n FOR UPDATE SKIP LOCKED
                 ) c
             ), claimed AS (
                 UPDATE scheduler.tasks t SET state = 'dispatched', attempts = t.attempts + 1, updated_at = now(),
                     dispatched_at = now(), progress_message = '', progress_fraction = -1
                 FROM next WHERE t.id = next.id
                 RETURNING t.workflow_id, next.seq, t.id, t.prompt, t.attempts, t.trace_context,
                           t.script, t.fields, next.workflow_name, t.timeout_ms, t.tool_policy
             )
             SELECT * FROM claimed
             UNION ALL
             -- The keyed workflows among the requests (no task: a marker).
             SELECT w.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
             FROM scheduler.workflows w
             WHERE w.id = ANY($1) AND cardinality(w.concurrency_keys) > 0",
        )
        .await?;
    let workflows: Vec<Uuid> = requests.iter().map(|r| r.workflow).collect();
    let owners: Vec<&str> = requests.iter().map(|r| r.owner.as_str()).collect();
    let terms: Vec<i64> = requests.iter().map(|r| r.term).collect();
    let rows = client
        .query(&statement, &[&workflows, &owners, &terms])
        .await?;
    let mut plain = PlainClaims::default();
    for row in &rows {
        if row.get::<_, Option<String>>(2).is_none() {
            plain.keyed.push(row.get(0));
            continue;
        }
        let (workflow, seq, task) = claimed_from_row(row);
        plain.claimed.entry(workflow).or_default().push((seq, task));
    }
    Ok(plain)
}
