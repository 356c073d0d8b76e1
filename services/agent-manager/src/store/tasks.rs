//! SQL for `agent_manager.tasks`: which attempt of a task went to which
//! session, and how it ended.
//!
//! Claims (one per `DispatchTask`) and completions (one per agent report)
//! arrive thousands of times a second on a busy manager, each from its own
//! caller. They go through group-commit batchers, so the ones that arrive
//! together share one statement and one commit.

use std::collections::HashMap;

use shepherd_platform::columns::{from_i32, from_i64, to_i64};
use shepherd_platform::db::{self, Client, DbBatcher, DbError, DbPool};
use uuid::Uuid;

use super::{LostTask, Store, TaskClaim, TaskState};
use crate::error::{Error, Result};

/// The batchers of the task table; part of `Store`.
#[derive(Clone)]
pub(super) struct TaskBatches {
    claims: DbBatcher<ClaimItem, Option<RawClaim>>,
    completions: DbBatcher<CompletionItem, Option<u32>>,
}

impl TaskBatches {
    pub(super) fn spawn(pool: &DbPool) -> Self {
        Self {
            claims: db::batcher(pool, claim_batch),
            completions: db::batcher(pool, complete_batch),
        }
    }
}

struct ClaimItem {
    task_id: String,
    agent_id: Uuid,
    session_id: Uuid,
    generation: i64,
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
    },
}

struct CompletionItem {
    task_id: String,
    session_id: Uuid,
    outcome: &'static str,
}

impl Store {
    /// Takes `task_id` for delivery over `session_id`, atomically: a new task
    /// or one whose last attempt was lost is (re)delivered; anything else is
    /// reported as it stands. Concurrent callers with one id cannot both win.
    pub async fn claim_task(
        &self,
        task_id: &str,
        agent_id: Uuid,
        session_id: Uuid,
        generation: u64,
    ) -> Result<TaskClaim> {
        let item = ClaimItem {
            task_id: task_id.to_owned(),
            agent_id,
            session_id,
            generation: to_i64(generation),
        };
        match self.tasks.claims.submit(item).await? {
            Some(RawClaim::Deliver { attempt }) => Ok(TaskClaim::Deliver {
                attempt: from_i32(attempt),
            }),
            Some(RawClaim::Existing {
                state,
                attempt,
                outcome,
            }) => Ok(TaskClaim::Existing {
                state: TaskState::parse(&state)?,
                attempt: from_i32(attempt),
                outcome,
            }),
            None => Err(Error::Unavailable(format!(
                "task {task_id} was removed while it was being claimed; dispatch it again"
            ))),
        }
    }

    /// Marks an in-flight task completed and returns its attempt; None if
    /// it is not in flight on this session.
    pub async fn mark_task_completed(
        &self,
        task_id: &str,
        session_id: Uuid,
        succeeded: bool,
    ) -> Result<Option<u32>> {
        let item = CompletionItem {
            task_id: task_id.to_owned(),
            session_id,
            outcome: if succeeded { "succeeded" } else { "failed" },
        };
        Ok(self.tasks.completions.submit(item).await?)
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

    /// At start-up no session is live, so everything in flight is lost.
    pub async fn mark_all_in_flight_lost(&self) -> Result<Vec<LostTask>> {
        self.mark_lost(
            "UPDATE agent_manager.tasks SET state = 'lost', updated_at = now()
             WHERE state IN ('delivered', 'accepted')
             RETURNING task_id, agent_id, generation, attempt",
            &[],
        )
        .await
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
        Ok(rows
            .iter()
            .map(|row| LostTask {
                task_id: row.get(0),
                agent_id: row.get(1),
                generation: from_i64(row.get(2)),
                attempt: from_i32(row.get(3)),
            })
            .collect())
    }
}

/// Claims a batch: one upsert takes every new or lost task, one read
/// reports the rest as they stand.
async fn claim_batch(
    client: Client,
    items: Vec<ClaimItem>,
) -> Result<Vec<Option<RawClaim>>, DbError> {
    let upsert = client
        .prepare_cached(
            "INSERT INTO agent_manager.tasks (task_id, agent_id, session_id, generation, state)
             SELECT v.task_id, v.agent_id, v.session_id, v.generation, 'delivered'
             FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::bigint[])
                  AS v(task_id, agent_id, session_id, generation)
             ON CONFLICT (task_id) DO UPDATE
             SET state = 'delivered', attempt = tasks.attempt + 1, agent_id = EXCLUDED.agent_id,
                 session_id = EXCLUDED.session_id, generation = EXCLUDED.generation,
                 outcome = NULL, updated_at = now()
             WHERE tasks.state = 'lost'
             RETURNING task_id, attempt",
        )
        .await?;
    let read = client
        .prepare_cached(
            "SELECT task_id, state, attempt, outcome FROM agent_manager.tasks
             WHERE task_id = ANY($1)",
        )
        .await?;
    let mut claims = vec![None; items.len()];
    // One upsert may not touch a row twice, so a repeated id (two callers
    // dispatching one task at once) goes in a later round: the first caller
    // wins, the second sees the task in flight.
    for mut round in rounds_of_distinct(&items, |item| item.task_id.as_str()) {
        // Rows in key order: two batches running at once lock common rows
        // in the same order, so they cannot deadlock.
        round.sort_by(|&a, &b| items[a].task_id.cmp(&items[b].task_id));
        let ids: Vec<&str> = round.iter().map(|&i| items[i].task_id.as_str()).collect();
        let agents: Vec<Uuid> = round.iter().map(|&i| items[i].agent_id).collect();
        let sessions: Vec<Uuid> = round.iter().map(|&i| items[i].session_id).collect();
        let generations: Vec<i64> = round.iter().map(|&i| items[i].generation).collect();
        let delivered: HashMap<String, i32> = client
            .query(&upsert, &[&ids, &agents, &sessions, &generations])
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

/// Completes a batch in one update; an item gets its attempt only if its
/// task was in flight on its session.
async fn complete_batch(
    client: Client,
    items: Vec<CompletionItem>,
) -> Result<Vec<Option<u32>>, DbError> {
    // Rows in key order: two batches running at once lock common rows in
    // the same order, so they cannot deadlock.
    let mut sorted: Vec<&CompletionItem> = items.iter().collect();
    sorted.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let ids: Vec<&str> = sorted.iter().map(|item| item.task_id.as_str()).collect();
    let sessions: Vec<Uuid> = sorted.iter().map(|item| item.session_id).collect();
    let outcomes: Vec<&str> = sorted.iter().map(|item| item.outcome).collect();
    let statement = client
        .prepare_cached(
            "UPDATE agent_manager.tasks t SET state = 'completed', outcome = v.outcome, updated_at = now()
             FROM UNNEST($1::text[], $2::uuid[], $3::text[]) AS v(task_id, session_id, outcome)
             WHERE t.task_id = v.task_id AND t.session_id = v.session_id
               AND t.state IN ('delivered', 'accepted')
             RETURNING t.task_id, t.session_id, t.attempt",
        )
        .await?;
    let mut completed: HashMap<(String, Uuid), i32> = client
        .query(&statement, &[&ids, &sessions, &outcomes])
        .await?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect();
    // A repeated report gets nothing: only the first one completed the task.
    Ok(items
        .iter()
        .map(|item| {
            completed
                .remove(&(item.task_id.clone(), item.session_id))
                .map(from_i32)
        })
        .collect())
}

/// Splits item indexes into rounds in which no key repeats, keeping the
/// submission order of repeats.
fn rounds_of_distinct<T>(items: &[T], key: impl Fn(&T) -> &str) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let round = seen.entry(key(item)).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(index);
        *round += 1;
    }
    rounds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_go_to_later_rounds_in_order() {
        let items = ["a", "b", "a", "c", "a", "b"];
        let rounds = rounds_of_distinct(&items, |item| *item);
        assert_eq!(rounds, vec![vec![0, 1, 3], vec![2, 5], vec![4]]);
    }
}
