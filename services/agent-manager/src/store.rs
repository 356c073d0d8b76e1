//! SQL for the `agent_manager` schema. Every query of the service lives here;
//! the rest of the crate speaks in domain types.

use std::collections::BTreeMap;
use std::time::Duration;

use shepherd_platform::columns::{from_i64, from_json, to_i64, to_json};
use shepherd_platform::db::{DbPool, GenericClient, Migration};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{AgentRecord, AgentSpec, AgentStatus, DesiredState, ExitReason, NewAgent};

mod approvals;
mod nodes;
mod tasks;

pub(crate) use approvals::SHEPHERD;
pub(crate) use nodes::{Fence, NodeRecord, Placement, Renewal, join};
use nodes::{fenced, moved};
pub(crate) use tasks::Completion;

pub(crate) const SCHEMA: &str = "agent_manager";

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "task_output",
        sql: include_str!("../migrations/0002_task_output.sql"),
    },
    Migration {
        version: 3,
        name: "live_restore",
        sql: include_str!("../migrations/0003_live_restore.sql"),
    },
    Migration {
        version: 4,
        name: "exit_reason",
        sql: include_str!("../migrations/0004_exit_reason.sql"),
    },
    Migration {
        version: 5,
        name: "external_agents",
        sql: include_str!("../migrations/0005_external_agents.sql"),
    },
    Migration {
        version: 6,
        name: "nodes",
        sql: include_str!("../migrations/0006_nodes.sql"),
    },
    Migration {
        version: 7,
        name: "approvals",
        sql: include_str!("../migrations/0007_approvals.sql"),
    },
    Migration {
        version: 8,
        name: "approval_digest",
        sql: include_str!("../migrations/0008_approval_digest.sql"),
    },
    Migration {
        version: 9,
        name: "audit",
        sql: include_str!("../migrations/0009_audit.sql"),
    },
];

const AGENT_COLUMNS: &str = "id, name, spec, labels, desired_state, status, status_message, \
                             generation, pid, exit_reason, instance_id, node, created_at, updated_at";

/// Names one process for its lifetime: a pid alone may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub started_at: i64,
}

/// What was recorded about an agent's running process.
#[derive(Debug, Clone)]
pub struct LaunchedProcess {
    pub identity: ProcessIdentity,
    pub token_hash: Vec<u8>,
}

/// One event ready to be stored: the sequence is assigned by `append_events`.
pub struct EventRow {
    pub agent_id: Uuid,
    pub kind: &'static str,
    pub payload: Vec<u8>,
}

/// The outcome of trying to take a task for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskClaim {
    /// The caller must deliver this attempt.
    Deliver { attempt: u32 },
    /// The task is in flight or finished: nothing to deliver.
    Existing {
        state: TaskState,
        attempt: u32,
        /// How a completed task ended, and its output.
        outcome: Option<TaskOutcome>,
        output: String,
    },
}

pub(crate) use crate::model::task::{TaskOutcome, TaskState};

/// A stored task as `BatchGetTaskStates` reports it.
#[derive(Debug, Clone)]
pub struct StoredTask {
    pub task_id: String,
    pub agent_id: Uuid,
    pub session_id: Uuid,
    pub state: TaskState,
    pub attempt: u32,
    pub outcome: Option<TaskOutcome>,
    pub output: String,
}

/// A task that was in flight and is now lost.
#[derive(Debug, Clone)]
pub struct LostTask {
    pub task_id: String,
    pub agent_id: Uuid,
    pub generation: u64,
    pub attempt: u32,
}

/// Filters of `list_agents`.
#[derive(Debug, Default, Clone)]
pub struct AgentFilter {
    pub status: Option<AgentStatus>,
    pub labels: BTreeMap<String, String>,
    /// Keyset pagination: only agents with a greater id (ids are UUIDv7, so
    /// id order is creation order).
    pub after: Option<Uuid>,
}

#[derive(Clone)]
pub struct Store {
    pool: DbPool,
    /// The batch pool: the task batchers' and the event writer's.
    batches: DbPool,
    tasks: tasks::TaskBatches,
    /// This manager's node: writes about agents are fenced by it.
    fence: Fence,
}

impl Store {
    /// Needs a running Tokio runtime: it starts the task table's batchers,
    /// on `batches` (see `db::connect_for_batches`).
    pub fn new(pool: DbPool, batches: &DbPool, fence: Fence) -> Self {
        Self {
            tasks: tasks::TaskBatches::spawn(batches),
            batches: batches.clone(),
            pool,
            fence,
        }
    }

    // ---- agents ----

    /// Stores a new agent (an external one with the hash of its credential).
    pub async fn insert_agent(
        &self,
        agent: &NewAgent,
        credential_hash: Option<&[u8]>,
    ) -> Result<AgentRecord> {
        let client = self.pool.get().await?;
        let spec = to_json(&agent.spec)?;
        let labels = to_json(&agent.labels)?;
        let id = Uuid::now_v7();
        let sql = format!(
            "INSERT INTO agent_manager.agents
                 (id, name, spec, labels, desired_state, status, credential_hash, node)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7) RETURNING {AGENT_COLUMNS}"
        );
        let result = client
            .query_one(
                &client.prepare_cached(&sql).await?,
                &[
                    &id,
                    &agent.name,
                    &spec,
                    &labels,
                    &agent.desired_state.as_str(),
                    &credential_hash,
                    &self.fence.name,
                ],
            )
            .await;
        match result {
            Ok(row) => agent_from_row(&row),
            Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(Error::already_exists(format!(
                    "an agent named {:?} already exists; pick another name",
                    agent.name
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    pub async fn get_agent(&self, id: Uuid) -> Result<Option<AgentRecord>> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agent_manager.agents WHERE id = $1");
        client
            .query_opt(&client.prepare_cached(&sql).await?, &[&id])
            .await?
            .map(|row| agent_from_row(&row))
            .transpose()
    }

    pub async fn list_agents(&self, filter: &AgentFilter, limit: i64) -> Result<Vec<AgentRecord>> {
        let client = self.pool.get().await?;
        let status = filter.status.map(AgentStatus::as_str);
        let labels = to_json(&filter.labels)?;
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agent_manager.agents
             WHERE ($1::text IS NULL OR status = $1)
               AND labels @> $2
               AND ($3::uuid IS NULL OR id > $3)
             ORDER BY id LIMIT $4"
        );
        client
            .query(
                &client.prepare_cached(&sql).await?,
                &[&status, &labels, &filter.after, &limit],
            )
            .await?
            .iter()
            .map(agent_from_row)
            .collect()
    }

    pub async fn all_agents(&self) -> Result<Vec<AgentRecord>> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agent_manager.agents ORDER BY id");
        client
            .query(&client.prepare_cached(&sql).await?, &[])
            .await?
            .iter()
            .map(agent_from_row)
            .collect()
    }

    pub async fn set_desired_state(&self, id: Uuid, desired: DesiredState) -> Result<AgentRecord> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE agent_manager.agents SET desired_state = $2, updated_at = now()
             WHERE id = $1 AND {} RETURNING {AGENT_COLUMNS}",
            fenced(3, 4)
        );
        let row = client
            .query_opt(
                &client.prepare_cached(&sql).await?,
                &[&id, &desired.as_str(), &self.fence.name, &self.fence.term],
            )
            .await?
            .ok_or_else(|| moved(id))?;
        agent_from_row(&row)
    }

    /// Records a newly launched generation: its process (None: a Pod) and
    /// token hash.
    pub async fn record_launch(
        &self,
        id: Uuid,
        generation: u64,
        process: Option<&ProcessIdentity>,
        token_hash: &[u8],
    ) -> Result<AgentRecord> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE agent_manager.agents
             SET generation = $2, pid = $3, pid_started_at = $4, session_token_hash = $5,
                 status = 'starting', status_message = '', updated_at = now()
             WHERE id = $1 AND {} RETURNING {AGENT_COLUMNS}",
            fenced(6, 7)
        );
        let row = client
            .query_opt(
                &client.prepare_cached(&sql).await?,
                &[
                    &id,
                    &to_i64(generation),
                    &process.map(|p| p.pid),
                    &process.map(|p| p.started_at),
                    &token_hash,
                    &self.fence.name,
                    &self.fence.term,
                ],
            )
            .await?
            .ok_or_else(|| moved(id))?;
        agent_from_row(&row)
    }

    /// An external agent's credential hash (None: not external, or gone).
    pub async fn credential_hash(&self, id: Uuid) -> Result<Option<Vec<u8>>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT credential_hash FROM agent_manager.agents WHERE id = $1",
                    )
                    .await?,
                &[&id],
            )
            .await?;
        Ok(row.and_then(|row| row.get(0)))
    }

    pub async fn set_credential_hash(&self, id: Uuid, hash: &[u8]) -> Result<AgentRecord> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE agent_manager.agents SET credential_hash = $2, updated_at = now()
             WHERE id = $1 RETURNING {AGENT_COLUMNS}"
        );
        let row = client
            .query_opt(&client.prepare_cached(&sql).await?, &[&id, &hash])
            .await?
            .ok_or_else(|| Error::AgentNotFound(id))?;
        agent_from_row(&row)
    }

    /// The process a previous manager launched for the agent, if one was
    /// recorded: what a restarted manager needs to adopt it.
    pub async fn launched_process(&self, id: Uuid) -> Result<Option<LaunchedProcess>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT pid, pid_started_at, session_token_hash FROM agent_manager.agents
                         WHERE id = $1 AND pid IS NOT NULL AND pid_started_at IS NOT NULL
                           AND session_token_hash IS NOT NULL",
                    )
                    .await?,
                &[&id],
            )
            .await?;
        Ok(row.map(|row| LaunchedProcess {
            identity: ProcessIdentity {
                pid: row.get(0),
                started_at: row.get(1),
            },
            token_hash: row.get(2),
        }))
    }

    /// Records the observed status. `pid: None` clears the pid (no process).
    pub async fn set_status(
        &self,
        id: Uuid,
        status: AgentStatus,
        message: &str,
        pid: Option<i32>,
    ) -> Result<AgentRecord> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE agent_manager.agents
             SET status = $2, status_message = $3, pid = $4, updated_at = now()
             WHERE id = $1 AND {} RETURNING {AGENT_COLUMNS}",
            fenced(5, 6)
        );
        let row = client
            .query_opt(
                &client.prepare_cached(&sql).await?,
                &[
                    &id,
                    &status.as_str(),
                    &message,
                    &pid,
                    &self.fence.name,
                    &self.fence.term,
                ],
            )
            .await?
            .ok_or_else(|| moved(id))?;
        agent_from_row(&row)
    }

    /// The process ended: EXITED, with why.
    pub async fn record_exit(
        &self,
        id: Uuid,
        message: &str,
        reason: ExitReason,
    ) -> Result<AgentRecord> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE agent_manager.agents
             SET status = 'exited', status_message = $2, pid = NULL, exit_reason = $3,
                 updated_at = now()
             WHERE id = $1 AND {} RETURNING {AGENT_COLUMNS}",
            fenced(4, 5)
        );
        let row = client
            .query_opt(
                &client.prepare_cached(&sql).await?,
                &[
                    &id,
                    &message,
                    &reason.as_str(),
                    &self.fence.name,
                    &self.fence.term,
                ],
            )
            .await?
            .ok_or_else(|| moved(id))?;
        agent_from_row(&row)
    }

    pub async fn delete_agent(&self, id: Uuid) -> Result<bool> {
        let client = self.pool.get().await?;
        let sql = format!(
            "DELETE FROM agent_manager.agents WHERE id = $1 AND {}",
            fenced(2, 3)
        );
        let deleted = client
            .execute(
                &client.prepare_cached(&sql).await?,
                &[&id, &self.fence.name, &self.fence.term],
            )
            .await?;
        Ok(deleted == 1)
    }

    // ---- event log ----

    /// Stores `events` with consecutive sequence numbers and returns the
    /// sequence of the first, in one statement (one round trip, one
    /// commit). The counter row stays locked until that commit, so a later
    /// sequence can never commit before an earlier one.
    pub async fn append_events(&self, events: &[EventRow]) -> Result<u64> {
        // The event log's one writer appends in batches (see `events`).
        let client = self.batches.get().await?;
        Ok(append_rows(&client, events).await?)
    }

    /// Records task reports and stores the events `events` makes of the
    /// outcome (which reports completed an attempt, in order), in one
    /// transaction: a report's state and its `TaskCompleted` event commit
    /// together or not at all, so no crash can leave a completion that no
    /// event will ever tell of. Returns each report's completed attempt
    /// (None: stale) and the sequence of the first event stored (None: no
    /// event).
    pub async fn record_reports_and_append(
        &self,
        reports: &[&Completion],
        events: impl FnOnce(&[Option<u32>]) -> Vec<EventRow>,
    ) -> Result<(Vec<Option<u32>>, Option<u64>)> {
        if reports.is_empty() {
            let rows = events(&[]);
            if rows.is_empty() {
                return Ok((Vec::new(), None));
            }
            return Ok((Vec::new(), Some(self.append_events(&rows).await?)));
        }
        let mut client = self.batches.get().await?;
        let tx = client.transaction().await?;
        let completed = tasks::complete_reports(&tx, reports).await?;
        // A crash here rolls the reports back: their agents send them again.
        shepherd_platform::failpoint::hit("manager.between_report_and_event");
        let rows = events(&completed);
        let first = if rows.is_empty() {
            None
        } else {
            Some(append_rows(&tx, &rows).await?)
        };
        tx.commit().await?;
        Ok((completed, first))
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

fn agent_from_row(row: &Row) -> Result<AgentRecord> {
    let spec: serde_json::Value = row.get("spec");
    let labels: serde_json::Value = row.get("labels");
    let desired: &str = row.get("desired_state");
    let status: &str = row.get("status");
    Ok(AgentRecord {
        id: row.get("id"),
        name: row.get("name"),
        spec: from_json::<AgentSpec>(spec)?,
        labels: from_json(labels)?,
        desired_state: DesiredState::parse(desired)
            .ok_or_else(|| Error::internal(format!("unknown desired state {desired:?}")))?,
        status: AgentStatus::parse(status)
            .ok_or_else(|| Error::internal(format!("unknown status {status:?}")))?,
        status_message: row.get("status_message"),
        generation: from_i64(row.get("generation")),
        pid: row.get("pid"),
        exit_reason: row
            .get::<_, Option<&str>>("exit_reason")
            .and_then(ExitReason::parse),
        instance: row.get("instance_id"),
        node: row.get("node"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
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
