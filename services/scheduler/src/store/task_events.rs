//! The task change log (migration 0012): reading it in commit order, and
//! recording agents' progress into it.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::Store;
use crate::error::{Error, Result};
use crate::model::TaskState;

/// A position in the change log: the writing transaction and the row's
/// number within the log. Shown to clients as `"<xid>.<n>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct TaskCursor {
    xid: u64,
    n: i64,
}

impl fmt::Display for TaskCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.xid, self.n)
    }
}

impl FromStr for TaskCursor {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        if text.is_empty() {
            return Ok(Self::default());
        }
        let invalid = || {
            Error::invalid(
                "after_cursor",
                format!(
                    "{} is not a cursor; pass one from a TaskEvent or heartbeat, or \"\" to start from the oldest change",
                    shepherd_platform::validate::quote(text)
                ),
            )
        };
        let (xid, n) = text.split_once('.').ok_or_else(invalid)?;
        Ok(Self {
            xid: xid.parse().map_err(|_| invalid())?,
            n: n.parse().map_err(|_| invalid())?,
        })
    }
}

/// Which changes a watcher wants.
#[derive(Debug, Clone, Default)]
pub struct TaskEventFilter {
    pub workflow: Option<Uuid>,
    pub task: Option<String>,
}

/// One change of a task.
#[derive(Debug, Clone)]
pub struct TaskChange {
    pub cursor: TaskCursor,
    pub task_id: String,
    pub workflow_id: Uuid,
    pub state: TaskState,
    pub attempt: u32,
    /// Set for progress reports: (message, fraction, output chunk).
    pub progress: Option<(String, f32, String)>,
    pub time: SystemTime,
}

/// A page of changes and where the next read starts.
#[derive(Debug, Clone)]
pub struct TaskChanges {
    pub changes: Vec<TaskChange>,
    /// Everything up to here was considered: resume after it.
    pub next: TaskCursor,
}

impl Store {
    /// Changes after `after` (matching `filter`) in commit order, at most
    /// `limit`. Only changes of transactions older than every transaction
    /// still running are read, so none can appear behind the returned
    /// cursor later.
    pub async fn task_changes(
        &self,
        after: TaskCursor,
        filter: &TaskEventFilter,
        limit: i64,
    ) -> Result<TaskChanges> {
        let client = self.pool.get().await?;
        // The horizon and the rows come from one statement (one snapshot):
        // a horizon read later could pass rows this read did not see.
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
                         SELECT horizon.xmin::text, e.xid::text, e.n, e.task_id, e.workflow_id,
                                e.state, e.attempt, e.progress_message, e.progress_fraction,
                                e.progress_output, e.created_at
                         FROM horizon LEFT JOIN LATERAL (
                             SELECT * FROM scheduler.task_events
                             WHERE (xid, n) > ($1::text::xid8, $2)
                               AND xid < horizon.xmin
                               AND ($3::uuid IS NULL OR workflow_id = $3)
                               AND ($4::text IS NULL OR task_id = $4)
                             ORDER BY xid, n LIMIT $5
                         ) e ON true
                         ORDER BY e.xid, e.n",
                    )
                    .await?,
                &[
                    &after.xid.to_string(),
                    &after.n,
                    &filter.workflow.or_else(|| {
                        // A task's changes are found through its workflow's
                        // index (the log has no index by task).
                        filter
                            .task
                            .as_deref()
                            .and_then(crate::model::workflow_of_task)
                    }),
                    &filter.task,
                    &limit,
                ],
            )
            .await?;
        let horizon = match rows.first() {
            Some(row) => parse_xid(row.get(0))?,
            None => return Err(Error::internal("no horizon read")),
        };
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(xid) = row.get::<_, Option<String>>(1) else {
                continue; // no change: the one row carries only the horizon
            };
            let state: String = row.get(5);
            let message: Option<String> = row.get(7);
            changes.push(TaskChange {
                cursor: TaskCursor {
                    xid: parse_xid(xid)?,
                    n: row.get(2),
                },
                task_id: row.get(3),
                workflow_id: row.get(4),
                state: TaskState::parse(&state)
                    .ok_or_else(|| Error::internal(format!("stored task state {state:?}")))?,
                attempt: u32::try_from(row.get::<_, i32>(6)).unwrap_or(0),
                progress: message.map(|message| {
                    (
                        message,
                        row.get::<_, Option<f32>>(8).unwrap_or(-1.0),
                        row.get::<_, Option<String>>(9).unwrap_or_default(),
                    )
                }),
                time: row.get(10),
            });
        }
        let mut next = changes.last().map_or(after, |last| last.cursor).max(after);
        if (changes.len() as i64) < limit {
            // A short page: every change below the horizon was considered,
            // matching or not, so a filtered watcher need not scan them again.
            let considered = TaskCursor {
                xid: horizon.saturating_sub(1),
                n: i64::MAX,
            };
            next = next.max(considered);
        }
        Ok(TaskChanges { changes, next })
    }

    /// Records an agent's progress on `attempt` of a task that is still
    /// running it: the task shows it, and the change log carries it (output
    /// chunks only there). A report about another attempt is dropped.
    pub async fn record_progress(
        &self,
        task_id: &str,
        attempt: u32,
        message: &str,
        fraction: f32,
        output: &str,
    ) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "WITH task AS (
                             UPDATE scheduler.tasks
                             SET progress_message = $3, progress_fraction = $4
                             WHERE id = $1 AND attempts = $2 AND state = 'dispatched'
                             RETURNING id, workflow_id, state, attempts)
                         INSERT INTO scheduler.task_events
                             (task_id, workflow_id, state, attempt,
                              progress_message, progress_fraction, progress_output)
                         SELECT id, workflow_id, state, attempts, $3, $4, $5 FROM task",
                    )
                    .await?,
                &[
                    &task_id,
                    &i32::try_from(attempt).unwrap_or(i32::MAX),
                    &message,
                    &fraction,
                    &output,
                ],
            )
            .await?;
        Ok(())
    }

    /// Forgets changes older than `retention`, oldest first in commit
    /// order (the log's primary key; it keeps no time index), a bounded
    /// chunk at a time so that a pass never scans more than it deletes and
    /// a chunk's locks are short.
    pub async fn prune_task_changes(&self, retention: Duration) -> Result<u64> {
        const CHUNK: i64 = 5000;
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "DELETE FROM scheduler.task_events e
                 USING (SELECT xid, n FROM scheduler.task_events ORDER BY xid, n LIMIT $2) oldest
                 WHERE e.xid = oldest.xid AND e.n = oldest.n
                   AND e.created_at < now() - make_interval(secs => $1)",
            )
            .await?;
        let mut pruned = 0;
        loop {
            let deleted = client
                .execute(&statement, &[&retention.as_secs_f64(), &CHUNK])
                .await?;
            pruned += deleted;
            // A chunk not deleted whole reached changes still kept.
            if deleted < CHUNK as u64 {
                return Ok(pruned);
            }
        }
    }
}

fn parse_xid(text: String) -> Result<u64> {
    text.parse()
        .map_err(|_| Error::internal(format!("transaction id {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_print_parse_and_order() {
        let cursor: TaskCursor = "748.12".parse().unwrap();
        assert_eq!(cursor.to_string(), "748.12");
        assert_eq!("".parse::<TaskCursor>().unwrap(), TaskCursor::default());
        assert!("748".parse::<TaskCursor>().is_err());
        assert!("a.b".parse::<TaskCursor>().is_err());
        assert!(cursor < "749.1".parse().unwrap());
        assert!(cursor < "748.13".parse().unwrap());
    }
}
