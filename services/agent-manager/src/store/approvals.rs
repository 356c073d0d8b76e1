//! SQL for `agent_manager.approvals`: what agents asked before using a
//! tool, and how it was answered.
//!
//! Every change of state is one conditional UPDATE (`WHERE state =
//! 'pending'`), so whoever decides first (a person, the expiry pass, the
//! withdrawal pass) wins and the others see that decision.

use std::time::Duration;

use shepherd_platform::columns::{from_i32, from_i64, to_i32, to_i64};
use tokio_postgres::Row;
use uuid::Uuid;

use super::Store;
use crate::error::{Error, Result};
use crate::model::approval::{Approval, ApprovalAsk, ApprovalFilter, ApprovalState};

const COLUMNS: &str = "id, agent_id, request_id, generation, task_id, attempt, workflow_id, tool, \
                       input, reason, digest, state, comment, decided_by, created_at, expires_at, \
                       decided_at";

/// Who resolves the approvals nobody decided.
pub(crate) const SHEPHERD: &str = "shepherd";

impl Store {
    /// Stores an agent's request, or finds the one it sent before (same
    /// request id); true when this call stored it. None when the agent has
    /// `max_pending` approvals pending already.
    pub async fn request_approval(
        &self,
        agent_id: Uuid,
        generation: u64,
        ask: &ApprovalAsk,
        timeout: Duration,
        max_pending: i64,
    ) -> Result<Option<(Approval, bool)>> {
        let client = self.pool.get().await?;
        let insert = format!(
            "INSERT INTO agent_manager.approvals
                 (id, agent_id, request_id, generation, task_id, attempt, workflow_id, tool,
                  input, reason, state, expires_at, digest)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending',
                    now() + make_interval(secs => $11), $13
             WHERE (SELECT count(*) FROM agent_manager.approvals
                    WHERE agent_id = $2 AND state = 'pending') < $12
             ON CONFLICT (agent_id, request_id) DO NOTHING
             RETURNING {COLUMNS}"
        );
        let inserted = client
            .query_opt(
                &client.prepare_cached(&insert).await?,
                &[
                    &Uuid::now_v7(),
                    &agent_id,
                    &ask.request_id,
                    &to_i64(generation),
                    &ask.task_id,
                    &to_i32(ask.attempt),
                    &ask.workflow_id,
                    &ask.tool,
                    &ask.input,
                    &ask.reason,
                    &timeout.as_secs_f64(),
                    &max_pending,
                    &ask.digest(),
                ],
            )
            .await?;
        if let Some(row) = inserted {
            return Ok(Some((approval_from_row(&row)?, true)));
        }
        // A statement of its own, so it sees a row a concurrent insert of
        // the same request committed meanwhile.
        let existing = self.approval_by_request(agent_id, &ask.request_id).await?;
        Ok(existing.map(|approval| (approval, false)))
    }

    /// The approval an agent asked for with `request_id`, if stored.
    pub async fn approval_by_request(
        &self,
        agent_id: Uuid,
        request_id: &str,
    ) -> Result<Option<Approval>> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM agent_manager.approvals WHERE agent_id = $1 AND request_id = $2"
        );
        client
            .query_opt(
                &client.prepare_cached(&sql).await?,
                &[&agent_id, &request_id],
            )
            .await?
            .as_ref()
            .map(approval_from_row)
            .transpose()
    }

    pub async fn get_approval(&self, id: Uuid) -> Result<Approval> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT {COLUMNS} FROM agent_manager.approvals WHERE id = $1");
        let row = client
            .query_opt(&client.prepare_cached(&sql).await?, &[&id])
            .await?
            .ok_or_else(|| Error::not_found(format!("approval {id} not found")))?;
        approval_from_row(&row)
    }

    /// Newest first, `limit` of them, older than `filter.before`.
    pub async fn list_approvals(
        &self,
        filter: &ApprovalFilter,
        limit: i64,
    ) -> Result<Vec<Approval>> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM agent_manager.approvals
             WHERE ($1::text IS NULL OR state = $1)
               AND ($2::uuid IS NULL OR agent_id = $2)
               AND ($3::text IS NULL OR workflow_id = $3)
               AND ($4::uuid IS NULL OR id < $4)
             ORDER BY id DESC LIMIT $5"
        );
        let state = filter.state.map(ApprovalState::as_str);
        client
            .query(
                &client.prepare_cached(&sql).await?,
                &[
                    &state,
                    &filter.agent_id,
                    &filter.workflow_id,
                    &filter.before,
                    &limit,
                ],
            )
            .await?
            .iter()
            .map(approval_from_row)
            .collect()
    }

    /// Decides a pending approval; true when this call decided it. An
    /// approval decided before is returned as it stands.
    pub async fn decide_approval(
        &self,
        id: Uuid,
        state: ApprovalState,
        comment: &str,
        decided_by: &str,
    ) -> Result<(Approval, bool)> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE agent_manager.approvals
             SET state = $2, comment = $3, decided_by = $4, decided_at = now()
             WHERE id = $1 AND state = 'pending'
             RETURNING {COLUMNS}"
        );
        let decided = client
            .query_opt(
                &client.prepare_cached(&sql).await?,
                &[&id, &state.as_str(), &comment, &decided_by],
            )
            .await?;
        drop(client);
        match decided {
            Some(row) => Ok((approval_from_row(&row)?, true)),
            // Read in a statement of its own: it sees the decision that
            // won (an UPDATE's own snapshot would still show it pending).
            None => Ok((self.get_approval(id).await?, false)),
        }
    }

    /// Resolves the pending approvals nobody will decide: expired ones, and
    /// those whose task attempt no longer runs (it finished, was cancelled,
    /// timed out or was lost). Returns them as resolved.
    pub async fn resolve_stale_approvals(&self, timeout: Duration) -> Result<Vec<Approval>> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE agent_manager.approvals a
             SET state = CASE WHEN a.expires_at <= now() THEN 'expired' ELSE 'withdrawn' END,
                 comment = CASE WHEN a.expires_at <= now()
                     THEN 'expired: nobody decided within ' || $1
                     ELSE 'withdrawn: ' || COALESCE(
                         (SELECT CASE
                              WHEN t.attempt <> a.attempt THEN 'another attempt of the task runs'
                              WHEN t.state = 'lost' THEN 'the task was lost'
                              WHEN t.outcome = 'cancelled' THEN 'the task was cancelled'
                              WHEN t.outcome = 'timed_out' THEN 'the task timed out'
                              ELSE 'the task ended' END
                          FROM agent_manager.tasks t WHERE t.task_id = a.task_id),
                         'the task is unknown')
                 END,
                 decided_by = '{SHEPHERD}', decided_at = now()
             WHERE a.state = 'pending'
               AND (a.expires_at <= now()
                    -- A budget's approval (no task) only expires.
                    OR a.task_id <> '' AND NOT EXISTS (SELECT 1 FROM agent_manager.tasks t
                                   WHERE t.task_id = a.task_id AND t.attempt = a.attempt
                                     AND t.state IN ('delivered', 'accepted')))
             RETURNING {COLUMNS}"
        );
        let timeout = humantime::format_duration(timeout).to_string();
        client
            .query(&client.prepare_cached(&sql).await?, &[&timeout])
            .await?
            .iter()
            .map(approval_from_row)
            .collect()
    }
}

fn approval_from_row(row: &Row) -> Result<Approval> {
    let state: &str = row.get("state");
    Ok(Approval {
        id: row.get("id"),
        agent_id: row.get("agent_id"),
        request_id: row.get("request_id"),
        generation: from_i64(row.get("generation")),
        task_id: row.get("task_id"),
        attempt: from_i32(row.get("attempt")),
        workflow_id: row.get("workflow_id"),
        tool: row.get("tool"),
        input: row.get("input"),
        reason: row.get("reason"),
        digest: row.get("digest"),
        state: ApprovalState::parse(state)
            .ok_or_else(|| Error::internal(format!("unknown approval state {state:?}")))?,
        comment: row.get("comment"),
        decided_by: row.get("decided_by"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        decided_at: row.get("decided_at"),
    })
}
