//! SQL for `agent_manager.tasks`: which attempt of a task went to which
//! session, and how it ended.
//!
//! Claims (one per `DispatchTask`) and completions (one per agent report)
//! arrive thousands of times a second on a busy manager, each from its own
//! caller. They go through group-commit batchers, so the ones that arrive
//! together share one statement and one commit.

use std::collections::HashMap;

use shepherd_platform::columns::{from_i32, from_i64, to_i32, to_i64};
use shepherd_platform::db::{self, Client, DbBatcher, DbError, DbPool, GenericClient};
use uuid::Uuid;

use super::{LostTask, Store, StoredTask, TaskClaim, TaskOutcome, TaskState};
use crate::error::{Error, Result};

/// The batcher of task claims; part of `Store`. (Reports are recorded in
/// batches too, by the event log's writer, together with their events:
/// see `Store::record_reports_and_append`.)
#[derive(Clone)]
pub(super) struct TaskBatches {
    claims: DbBatcher<ClaimItem, Option<RawClaim>>,
}

impl TaskBatches {
    pub(super) fn spawn(pool: &DbPool) -> Self {
        Self {
            claims: db::batcher(pool, claim_batch),
        }
    }
}

struct ClaimItem {
    task_id: String,
    agent_id: Uuid,
    session_id: Uuid,
    generation: i64,
    /// The caller's attempt number; 0: the manager numbers attempts.
    attempt: i32,
}

/// A claim as stored; parsed into `TaskClaim` by the caller, so that one
/// bad row fails only its own item.
#[derive(Clone)]
enum RawClaim {
    Deliver {
        attempt: i32,
    },
    Existing {
        state: String,
        attempt: i32,
        outcome: Option<String>,
        output: String,
    },
}

/// An agent's report of a finished task, as the session received it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub task_id: String,
    pub agent_id: Uuid,
    pub session_id: Uuid,
    /// The attempt the agent reports about; 0: whatever is in flight on
    /// `session_id` (agents that do not say).
    pub attempt: u32,
    pub outcome: TaskOutcome,
    pub output: String,
}

impl Store {
    /// Takes `task_id` for delivery over `session_id`, atomically: a new task
    /// or one whose last delivered attempt was lost (and is older than the
    /// requested `attempt`, when one is given) is (re)delivered; anything
    /// else is reported as it stands. So attempt N of a task is delivered at
    /// most once, and concurrent callers with one id cannot both win.
    pub async fn claim_task(
        &self,
        task_id: &str,
        agent_id: Uuid,
        session_id: Uuid,
        generation: u64,
        attempt: u32,
    ) -> Result<TaskClaim> {
        let item = ClaimItem {
            task_id: task_id.to_owned(),
            agent_id,
            session_id,
            generation: to_i64(generation),
            attempt: to_i32(attempt),
        };
        match self.tasks.claims.submit(item).await? {
            Some(RawClaim::Deliver { attempt }) => Ok(TaskClaim::Deliver {
                attempt: from_i32(attempt),
            }),
            Some(RawClaim::Existing {
                state,
                attempt,
                outcome,
                output,
            }) => Ok(TaskClaim::Existing {
                state: TaskState::parse(&state)?,
                attempt: from_i32(attempt),
                outcome: outcome.as_deref().and_then(TaskOutcome::parse),
                output,
            }),
            None => Err(Error::unavailable(format!(
                "task {task_id} was removed while it was being claimed; dispatch it again"
            ))),
        }
    }

    /// The stored state of each of `task_ids` that the manager knows.
    pub async fn task_states(&self, task_ids: &[String]) -> Result<Vec<StoredTask>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT task_id, agent_id, session_id, state, attempt, outcome, output
                         FROM agent_manager.tasks WHERE task_id = ANY($1)",
                    )
                    .await?,
                &[&task_ids],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredTask {
                    task_id: row.get(0),
                    agent_id: row.get(1),
                    session_id: row.get(2),
                    state: TaskState::parse(row.get(3))?,
                    attempt: from_i32(row.get(4)),
                    outcome: row.get::<_, Option<&str>>(5).and_then(TaskOutcome::parse),
                    output: row.get(6),
                })
            })
            .collect()
    }

    /// Marks every task in flight on `session_id` lost.
    pub async fn mark_session_tasks_lost(&self, session_id: Uuid) -> Result<Vec<LostTask>> {
        self.mark_lost(
            "UPDATE agent_manager.tasks SET state = 'lost', updated_at = now()
             WHERE session_id = $1 AND state IN ('delivered', 'accepted')
             RETURNING task_id, agent_id, generation, attempt",
            &[&session_id],
        )
        .await
    }

    /// Marks one task lost if it is still in flight on `session_id`.
    pub async fn mark_task_lost(&self, task_id: &str, session_id: Uuid) -> Result<Vec<LostTask>> {
        self.mark_lost(
            "UPDATE agent_manager.tasks SET state = 'lost', updated_at = now()
             WHERE task_id = $1 AND session_id = $2 AND state IN ('delivered', 'accepted')
             RETURNING task_id, agent_id, generation, attempt",
            &[&task_id, &session_id],
        )
        .await
    }

    /// At start-up no session of this node is live: what was in flight on
    /// these agents (this node's, except those whose processes were
    /// adopted: their tasks wait for the process to reconnect and say what
    /// it holds) is lost.
    pub async fn mark_in_flight_lost(&self, agents: &[Uuid]) -> Result<Vec<LostTask>> {
        self.mark_lost(
            "UPDATE agent_manager.tasks SET state = 'lost', updated_at = now()
             WHERE state IN ('delivered', 'accepted') AND agent_id = ANY($1)
             RETURNING task_id, agent_id, generation, attempt",
            &[&agents],
        )
        .await
    }

    /// Marks the agent's tasks in flight of generations up to `through`
    /// lost: a node sweeping what its generation left never touches the
    /// tasks of a newer generation another node supervises.
    pub async fn mark_agent_tasks_lost(
        &self,
        agent_id: Uuid,
        through: u64,
    ) -> Result<Vec<LostTask>> {
        self.mark_lost(
            "UPDATE agent_manager.tasks SET state = 'lost', updated_at = now()
             WHERE agent_id = $1 AND state IN ('delivered', 'accepted') AND generation <= $2
             RETURNING task_id, agent_id, generation, attempt",
            &[&agent_id, &to_i64(through)],
        )
        .await
    }

    /// A new session of a process that held tasks on earlier sessions:
    /// the tasks it names (by id and attempt, still in flight, same
    /// generation) move to `session_id`; every other task in flight on the
    /// agent's earlier sessions is lost. One transaction, so no task is
    /// both carried over and lost.
    pub async fn reattach_tasks(
        &self,
        agent_id: Uuid,
        generation: u64,
        session_id: Uuid,
        held: &[(String, u32)],
    ) -> Result<(Vec<Reattached>, Vec<LostTask>)> {
        let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
        let attempts: Vec<i32> = held.iter().map(|(_, attempt)| to_i32(*attempt)).collect();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let moved = tx
            .query(
                &tx.prepare_cached(
                    "UPDATE agent_manager.tasks t SET session_id = $3, updated_at = now()
                     FROM UNNEST($4::text[], $5::integer[]) AS v(task_id, attempt)
                     WHERE t.task_id = v.task_id AND t.attempt = v.attempt
                       AND t.agent_id = $1 AND t.generation = $2
                       AND t.state IN ('delivered', 'accepted')
                     RETURNING t.task_id, t.attempt, t.state",
                )
                .await?,
                &[&agent_id, &to_i64(generation), &session_id, &ids, &attempts],
            )
            .await?;
        let lost = tx
            .query(
                &tx.prepare_cached(
                    "UPDATE agent_manager.tasks SET state = 'lost', updated_at = now()
                     WHERE agent_id = $1 AND state IN ('delivered', 'accepted')
                       AND session_id <> $2
                     RETURNING task_id, agent_id, generation, attempt",
                )
                .await?,
                &[&agent_id, &session_id],
            )
            .await?;
        tx.commit().await?;
        let moved = moved
            .iter()
            .map(|row| {
                Ok(Reattached {
                    task_id: row.get(0),
                    attempt: from_i32(row.get(1)),
                    state: TaskState::parse(row.get(2))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok((moved, lost.iter().map(lost_from_row).collect()))
    }

    async fn mark_lost(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<LostTask>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(&client.prepare_cached(sql).await?, params)
            .await?;
        Ok(rows.iter().map(lost_from_row).collect())
    }
}

/// A row of `RETURNING task_id, agent_id, generation, attempt`.
pub(super) fn lost_from_row(row: &tokio_postgres::Row) -> LostTask {
    LostTask {
        task_id: row.get(0),
        agent_id: row.get(1),
        generation: from_i64(row.get(2)),
        attempt: from_i32(row.get(3)),
    }
}

/// A task carried over to a new session of the process that runs it.
#[derive(Debug, Clone)]
pub struct Reattached {
    pub task_id: String,
    pub attempt: u32,
    pub state: TaskState,
}

/// Claims a batch: one upsert takes every new or lost task, one read
/// reports the rest as they stand.
async fn claim_batch(
    client: Client,
    items: Vec<ClaimItem>,
) -> Result<Vec<Option<RawClaim>>, DbError> {
    // A lost attempt older than the requested one is delivered again (as
    // the requested attempt, or the next one when none is given); a new
    // task is inserted. Both in one statement: for a given id only one of
    // the two can apply.
    let upsert = client
        .prepare_cached(
            "WITH v AS (
                 SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::bigint[], $5::integer[])
                     AS v(task_id, agent_id, session_id, generation, attempt)
             ), redelivered AS (
                 UPDATE agent_manager.tasks t
                 SET state = 'delivered',
                     attempt = CASE WHEN v.attempt > 0 THEN v.attempt ELSE t.attempt + 1 END,
                     agent_id = v.agent_id, session_id = v.session_id, generation = v.generation,
                     outcome = NULL, output = '', updated_at = now()
                 FROM v
                 WHERE t.task_id = v.task_id AND t.state = 'lost'
                   AND (v.attempt = 0 OR t.attempt < v.attempt)
                 RETURNING t.task_id, t.attempt
             ), inserted AS (
                 INSERT INTO agent_manager.tasks (task_id, agent_id, session_id, generation, state, attempt)
                 SELECT v.task_id, v.agent_id, v.session_id, v.generation, 'delivered', GREATEST(v.attempt, 1)
                 FROM v
                 ON CONFLICT (task_id) DO NOTHING
                 RETURNING task_id, attempt
             )
             SELECT task_id, attempt FROM redelivered
             UNION ALL SELECT task_id, attempt FROM inserted",
        )
        .await?;
    let read = client
        .prepare_cached(
            "SELECT task_id, state, attempt, outcome, output FROM agent_manager.tasks
             WHERE task_id = ANY($1)",
        )
        .await?;
    let mut claims = vec![None; items.len()];
    // One upsert may not touch a row twice, so a repeated id (two callers
    // dispatching one task at once) goes in a later round: the first caller
    // wins, the second sees the task in flight.
    for mut round in
        shepherd_platform::batch::rounds_of_distinct(&items, |item| item.task_id.as_str())
    {
        // Rows in key order: two batches running at once lock common rows
        // in the same order, so they cannot deadlock.
        round.sort_by(|&a, &b| items[a].task_id.cmp(&items[b].task_id));
        let ids: Vec<&str> = round.iter().map(|&i| items[i].task_id.as_str()).collect();
        let agents: Vec<Uuid> = round.iter().map(|&i| items[i].agent_id).collect();
        let sessions: Vec<Uuid> = round.iter().map(|&i| items[i].session_id).collect();
        let generations: Vec<i64> = round.iter().map(|&i| items[i].generation).collect();
        let attempts: Vec<i32> = round.iter().map(|&i| items[i].attempt).collect();
        let delivered: HashMap<String, i32> = client
            .query(
                &upsert,
                &[&ids, &agents, &sessions, &generations, &attempts],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let existing: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !delivered.contains_key(*id))
            .collect();
        let mut stood: HashMap<String, RawClaim> = HashMap::new();
        if !existing.is_empty() {
            for row in client.query(&read, &[&existing]).await? {
                let claim = RawClaim::Existing {
                    state: row.get(1),
                    attempt: row.get(2),
                    outcome: row.get(3),
                    output: row.get(4),
                };
                stood.insert(row.get(0), claim);
            }
        }
        for &i in &round {
            let id = items[i].task_id.as_str();
            claims[i] = match delivered.get(id) {
                Some(&attempt) => Some(RawClaim::Deliver { attempt }),
                None => stood.get(id).cloned(),
            };
        }
    }
    Ok(claims)
}

/// Records a batch of reports in one update. An item gets the attempt it
/// completed, or None if it is stale: about an attempt that is not the
/// task's current one, or already completed. A report about the current
/// attempt completes it even if that attempt was declared lost (the
/// session dropped while the agent kept working): the work was done, so a
/// retry need not do it again.
pub(super) async fn complete_reports(
    client: &impl GenericClient,
    items: &[&Completion],
) -> Result<Vec<Option<u32>>, DbError> {
    // Rows in key order: two batches running at once lock common rows in
    // the same order, so they cannot deadlock.
    let mut sorted: Vec<&Completion> = items.to_vec();
    sorted.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let ids: Vec<&str> = sorted.iter().map(|item| item.task_id.as_str()).collect();
    let agents: Vec<Uuid> = sorted.iter().map(|item| item.agent_id).collect();
    let sessions: Vec<Uuid> = sorted.iter().map(|item| item.session_id).collect();
    let attempts: Vec<i32> = sorted.iter().map(|item| to_i32(item.attempt)).collect();
    let outcomes: Vec<&str> = sorted.iter().map(|item| item.outcome.as_str()).collect();
    let outputs: Vec<&str> = sorted.iter().map(|item| item.output.as_str()).collect();
    let statement = client
        .prepare_cached(
            "UPDATE agent_manager.tasks t
             SET state = 'completed', outcome = v.outcome, output = v.output, updated_at = now()
             FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::integer[], $5::text[], $6::text[])
                  AS v(task_id, agent_id, session_id, attempt, outcome, output)
             WHERE t.task_id = v.task_id AND t.agent_id = v.agent_id
               AND CASE WHEN v.attempt > 0
                        THEN t.attempt = v.attempt AND t.state IN ('delivered', 'accepted', 'lost')
                        ELSE t.session_id = v.session_id AND t.state IN ('delivered', 'accepted')
                   END
             RETURNING t.task_id, t.attempt",
        )
        .await?;
    let mut completed: HashMap<String, i32> = client
        .query(
            &statement,
            &[&ids, &agents, &sessions, &attempts, &outcomes, &outputs],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    // A repeated report gets nothing: only the first one completed the task.
    Ok(items
        .iter()
        .map(|item| completed.remove(&item.task_id).map(from_i32))
        .collect())
}
