//! SQL of the event log: appends (alone, or in one transaction with the
//! task reports and agent changes they tell of), reads and pruning.

use std::time::Duration;

use shepherd_platform::columns::{from_i64, to_i64};
use shepherd_platform::db::GenericClient;
use uuid::Uuid;

use super::agents::{AgentChange, change_agent};
use super::{Completion, EventRow, Store, tasks};
use crate::error::Result;
use crate::model::AgentRecord;

/// What one batch of the event log's writer stored.
#[derive(Debug, Default)]
pub struct LogBatch {
    /// For each report, in order, the attempt it completed (None: stale).
    pub completed: Vec<Option<u32>>,
    /// For each change, in order, the agent as written (None: fenced off).
    pub changed: Vec<Option<AgentRecord>>,
    /// The sequence of the first event stored (None: no event).
    pub first: Option<u64>,
}

impl Store {
    /// Stores `events` with consecutive sequence numbers and returns the
    /// sequence of the first, in one statement (one round trip, one
    /// commit). The counter row stays locked until that commit, so a later
    /// sequence can never commit before an earlier one.
    pub async fn append_events(&self, events: &[EventRow]) -> Result<u64> {
        // The event log's one writer appends in batches (see `events`).
        let client = self.batches.get().await?;
        Ok(append_rows(&client, events).await?)
    }

    /// Stores one batch of the event log's writer in one transaction:
    /// records the task reports, writes the agent changes (each fenced:
    /// see `AgentChange`), then appends the events `events` makes of what
    /// that did (which reports completed an attempt, which changes
    /// applied). A report's state or an agent's status and the event that
    /// tells of it commit together or not at all, so no crash can leave a
    /// completion or a transition that no event will ever tell of.
    pub async fn commit_log_batch(
        &self,
        reports: &[&Completion],
        changes: &[(Uuid, &AgentChange)],
        events: impl FnOnce(&[Option<u32>], &[Option<AgentRecord>]) -> Vec<EventRow>,
    ) -> Result<LogBatch> {
        if reports.is_empty() && changes.is_empty() {
            let rows = events(&[], &[]);
            let first = match rows.is_empty() {
                true => None,
                false => Some(self.append_events(&rows).await?),
            };
            return Ok(LogBatch {
                first,
                ..LogBatch::default()
            });
        }
        let mut client = self.batches.get().await?;
        let tx = client.transaction().await?;
        let mut completed = Vec::new();
        if !reports.is_empty() {
            completed = tasks::complete_reports(&tx, reports).await?;
            // A crash here rolls the reports back: their agents send them
            // again.
            shepherd_platform::failpoint::hit("manager.between_report_and_event");
        }
        // One round trip for them all: the queries are pipelined on the
        // transaction's connection.
        let changed = futures_util::future::try_join_all(
            changes
                .iter()
                .map(|(id, change)| change_agent(&tx, &self.fence, *id, change)),
        )
        .await?;
        if !changes.is_empty() {
            // A crash here rolls the changes back: their supervisors' next
            // manager starts from the state before them.
            shepherd_platform::failpoint::hit("manager.between_change_and_event");
        }
        let rows = events(&completed, &changed);
        let first = match rows.is_empty() {
            true => None,
            false => Some(append_rows(&tx, &rows).await?),
        };
        tx.commit().await?;
        Ok(LogBatch {
            completed,
            changed,
            first,
        })
    }

    /// `(last committed sequence, pruned through)`.
    pub async fn log_state(&self) -> Result<(u64, u64)> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT last_seq, pruned_through FROM agent_manager.event_log_state",
                    )
                    .await?,
                &[],
            )
            .await?;
        Ok((from_i64(row.get(0)), from_i64(row.get(1))))
    }

    /// Stored events with `after < seq <= through`, in order, optionally of one
    /// agent: `(seq, payload)`.
    pub async fn read_events(
        &self,
        after: u64,
        through: u64,
        agent: Option<Uuid>,
        kinds: &[&str],
        limit: i64,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT seq, payload FROM agent_manager.events
                 WHERE seq > $1 AND seq <= $2 AND ($3::uuid IS NULL OR agent_id = $3)
                   AND (cardinality($5::text[]) = 0 OR kind = ANY($5))
                 ORDER BY seq LIMIT $4",
                    )
                    .await?,
                &[&to_i64(after), &to_i64(through), &agent, &limit, &kinds],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| (from_i64(row.get(0)), row.get(1)))
            .collect())
    }

    /// Deletes events up to `through` (bounded by the last sequence) and
    /// returns `(pruned_through, deleted)`.
    pub async fn prune_events(&self, through: u64) -> Result<(u64, u64)> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                &tx.prepare_cached(
                    "UPDATE agent_manager.event_log_state
                 SET pruned_through = GREATEST(pruned_through, LEAST($1, last_seq))
                 RETURNING pruned_through",
                )
                .await?,
                &[&to_i64(through)],
            )
            .await?;
        let pruned_through: i64 = row.get(0);
        let deleted = tx
            .execute(
                &tx.prepare_cached("DELETE FROM agent_manager.events WHERE seq <= $1")
                    .await?,
                &[&pruned_through],
            )
            .await?;
        tx.commit().await?;
        Ok((from_i64(pruned_through), deleted))
    }

    /// The highest sequence older than `age`, if any: the retention bound.
    pub async fn last_seq_older_than(&self, age: Duration) -> Result<Option<u64>> {
        let client = self.pool.get().await?;
        let seconds = age.as_secs_f64();
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT max(seq) FROM agent_manager.events
                 WHERE created_at < now() - make_interval(secs => $1)",
                    )
                    .await?,
                &[&seconds],
            )
            .await?;
        Ok(row.get::<_, Option<i64>>(0).map(from_i64))
    }
}

/// Appends `events` after the log's last sequence (see
/// `Store::append_events`); returns the sequence of the first.
async fn append_rows(
    client: &impl GenericClient,
    events: &[EventRow],
) -> std::result::Result<u64, shepherd_platform::db::DbError> {
    let agents: Vec<Uuid> = events.iter().map(|e| e.agent_id).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
    // Data-modifying CTEs run exactly once whether or not the final
    // SELECT reads them.
    let row = client
        .query_one(
            &client
                .prepare_cached(
                    "WITH counter AS (
                         UPDATE agent_manager.event_log_state
                         SET last_seq = last_seq + cardinality($1::uuid[])
                         RETURNING last_seq - cardinality($1::uuid[]) AS before
                     ), stored AS (
                         INSERT INTO agent_manager.events (seq, agent_id, kind, payload)
                         SELECT counter.before + v.n, v.agent_id, v.kind, v.payload
                         FROM counter, UNNEST($1::uuid[], $2::text[], $3::bytea[])
                              WITH ORDINALITY AS v(agent_id, kind, payload, n)
                     ), notified AS (
                         -- Delivered at commit: every manager on this
                         -- database learns how far the log reaches.
                         SELECT pg_notify('shepherd_agent_events',
                                          (before + cardinality($1::uuid[]))::text)
                         FROM counter
                     )
                     SELECT before + 1 FROM counter, notified",
                )
                .await?,
            &[&agents, &kinds, &payloads],
        )
        .await?;
    Ok(from_i64(row.get(0)))
}
