//! Concurrency keys: their definitions, what holds them, and a workflow's
//! wait for a slot.

use super::*;
use crate::explain::KeyFacts;
use crate::model::{ConcurrencyKey, KeyUsage, Rate};

impl Store {
    /// Defines a key or changes its limit. A lower limit takes effect as
    /// tasks holding the key finish (none is stopped).
    pub async fn put_key(&self, key: &ConcurrencyKey) -> Result<ConcurrencyKey> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "INSERT INTO scheduler.concurrency_keys
                             (name, max_running, rate_limit, rate_period_ms, tokens)
                         VALUES ($1, $2, $3, $4, coalesce($3, 0))
                         ON CONFLICT (name) DO UPDATE
                         SET max_running = EXCLUDED.max_running,
                             rate_limit = EXCLUDED.rate_limit,
                             rate_period_ms = EXCLUDED.rate_period_ms,
                             -- A new rate keeps what is left of the bucket,
                             -- up to its new size.
                             tokens = least(concurrency_keys.tokens, coalesce(EXCLUDED.rate_limit, 0)),
                             updated_at = now()
                         RETURNING name, max_running, rate_limit, rate_period_ms",
                    )
                    .await?,
                &[
                    &key.name,
                    &to_i32(key.max_running),
                    &key.rate.map(|rate| to_i32(rate.starts)),
                    &key.rate.map(|rate| to_millis(rate.period)),
                ],
            )
            .await?;
        Ok(key_from_row(&row))
    }

    /// Every key (or the one named), with what holds it now.
    pub async fn list_keys(&self, name: Option<&str>) -> Result<Vec<KeyUsage>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT k.name, k.max_running, k.rate_limit, k.rate_period_ms,
                                (SELECT count(*) FROM scheduler.key_holds h WHERE h.key = k.name),
                                (SELECT count(*) FILTER (WHERE wk.waiting_since IS NOT NULL)
                                 FROM scheduler.workflow_keys wk WHERE wk.key = k.name),
                                (SELECT count(*) FROM scheduler.workflow_keys wk WHERE wk.key = k.name)
                         FROM scheduler.concurrency_keys k
                         WHERE $1::text IS NULL OR k.name = $1
                         ORDER BY k.name",
                    )
                    .await?,
                &[&name],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| KeyUsage {
                key: key_from_row(row),
                running: count(row.get(4)),
                waiting: count(row.get(5)),
                workflows: count(row.get(6)),
            })
            .collect())
    }

    /// Deletes a key no workflow names. False if there was none.
    pub async fn delete_key(&self, name: &str) -> Result<bool> {
        let client = self.pool.get().await?;
        let deleted = client
            .execute(
                &client
                    .prepare_cached("DELETE FROM scheduler.concurrency_keys WHERE name = $1")
                    .await?,
                &[&name],
            )
            .await;
        match deleted {
            Ok(n) => Ok(n == 1),
            Err(err) if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                Err(Error::failed_precondition(format!(
                    "key {name:?} is named by workflows; take it out of them first"
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// The keys a workflow names, each with what holds it now.
    pub(crate) async fn key_facts(&self, workflow: Uuid) -> Result<Vec<KeyFacts>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT k.name, k.max_running, held.n, held.names[1:10], k.rate_limit,
                                k.rate_period_ms,
                                least(k.rate_limit, k.tokens + extract(epoch FROM now() - k.refilled_at)
                                      * 1000 * k.rate_limit / k.rate_period_ms)::float8
                         FROM scheduler.workflow_keys wk
                         JOIN scheduler.concurrency_keys k ON k.name = wk.key
                         CROSS JOIN LATERAL (
                             SELECT count(*) AS n,
                                    coalesce(array_agg(DISTINCT w.name), '{}') AS names
                             FROM scheduler.key_holds h
                             JOIN scheduler.tasks t ON t.id = h.task_id
                             JOIN scheduler.workflows w ON w.id = t.workflow_id
                             WHERE h.key = k.name) held
                         WHERE wk.workflow_id = $1
                         ORDER BY k.name",
                    )
                    .await?,
                &[&workflow],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| KeyFacts {
                name: row.get(0),
                max_running: from_i32(row.get(1)),
                running: count(row.get(2)),
                holders: row.get(3),
                rate: match (row.get::<_, Option<i32>>(4), row.get::<_, Option<i64>>(5)) {
                    (Some(starts), Some(period_ms)) => Some((
                        from_i32(starts),
                        from_millis(period_ms),
                        row.get::<_, Option<f64>>(6).unwrap_or(0.0),
                    )),
                    _ => None,
                },
            })
            .collect())
    }

    /// The workflow no longer waits for a slot of any key (its runner
    /// stopped claiming: its agent is not ready, or it stopped).
    pub async fn stop_waiting_for_keys(&self, workflow: Uuid) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE scheduler.workflow_keys SET waiting_since = NULL
                         WHERE workflow_id = $1 AND waiting_since IS NOT NULL",
                    )
                    .await?,
                &[&workflow],
            )
            .await?;
        Ok(())
    }
}

/// A key from its first four columns: name, max_running, rate_limit,
/// rate_period_ms.
fn key_from_row(row: &Row) -> ConcurrencyKey {
    let rate = match (row.get::<_, Option<i32>>(2), row.get::<_, Option<i64>>(3)) {
        (Some(starts), Some(period)) => Some(Rate {
            starts: from_i32(starts),
            period: from_millis(period),
        }),
        _ => None,
    };
    ConcurrencyKey {
        name: row.get(0),
        max_running: from_i32(row.get(1)),
        rate,
    }
}

fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
