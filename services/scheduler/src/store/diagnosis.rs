//! What `ExplainWorkflow` reads of a workflow's tasks and lease, in two
//! statements.

use std::time::Duration;

use super::*;

/// A workflow's queue and lease as stored.
#[derive(Debug, Clone, Default)]
pub struct QueueFacts {
    pub pending: u64,
    pub due: u64,
    pub oldest_pending: Option<(String, Duration)>,
    pub in_flight_count: u64,
    /// The oldest first, at most 20: (id, attempt, age).
    pub in_flight: Vec<(String, u32, Duration)>,
    pub next_fire: Option<SystemTime>,
    pub last_error: String,
    /// A current lease: its holder and term.
    pub lease: Option<(String, i64)>,
}

fn age(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds.max(0.0))
}

impl Store {
    pub async fn queue_facts(&self, workflow: Uuid) -> Result<QueueFacts> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT
                           (SELECT count(*) FROM scheduler.tasks
                             WHERE workflow_id = $1 AND state = 'pending'),
                           (SELECT count(*) FROM scheduler.tasks
                             WHERE workflow_id = $1 AND state = 'pending'
                               AND (not_before IS NULL OR not_before <= now())),
                           (SELECT count(*) FROM scheduler.tasks
                             WHERE workflow_id = $1 AND state = 'dispatched'),
                           p.id, extract(epoch FROM now() - p.created_at)::float8,
                           (SELECT next_fire_at FROM scheduler.workflows WHERE id = $1),
                           (SELECT last_error FROM scheduler.tasks
                             WHERE workflow_id = $1 AND last_error <> ''
                             ORDER BY updated_at DESC LIMIT 1),
                           l.owner, l.term
                         FROM (SELECT 1) AS one
                         LEFT JOIN LATERAL (SELECT id, created_at FROM scheduler.tasks
                                            WHERE workflow_id = $1 AND state = 'pending'
                                            ORDER BY seq LIMIT 1) p ON true
                         LEFT JOIN scheduler.runner_leases l
                           ON l.workflow_id = $1 AND l.expires_at > now()",
                    )
                    .await?,
                &[&workflow],
            )
            .await?;
        let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        let oldest: Option<String> = row.get(3);
        let in_flight = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT id, attempts,
                                extract(epoch FROM now() - coalesce(dispatched_at, updated_at))::float8
                         FROM scheduler.tasks WHERE workflow_id = $1 AND state = 'dispatched'
                         ORDER BY coalesce(dispatched_at, updated_at) LIMIT 20",
                    )
                    .await?,
                &[&workflow],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), from_i32(row.get(1)), age(row.get(2))))
            .collect();
        Ok(QueueFacts {
            pending: count(0),
            due: count(1),
            in_flight_count: count(2),
            oldest_pending: oldest.map(|id| (id, age(row.get(4)))),
            next_fire: row.get(5),
            last_error: row.get::<_, Option<String>>(6).unwrap_or_default(),
            lease: row
                .get::<_, Option<String>>(7)
                .map(|owner| (owner, row.get::<_, i64>(8))),
            in_flight,
        })
    }
}
