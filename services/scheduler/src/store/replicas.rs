//! Which replicas are alive: each renews its own row, and holds the session
//! lock named in it while its process lives.

use std::sync::LazyLock;
use std::time::Duration;

use shepherd_platform::session_lock::held_by_some_session;

use super::Store;
use crate::error::Result;

/// What a renewal saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The live active (not standby) replicas' ids, sorted.
    pub live: Vec<String>,
    /// The row had been ended (by another replica that found its lock
    /// free, or by expiry) before this renewal.
    pub was_ended: bool,
}

impl Store {
    /// Renews `id`'s membership for `ttl`, naming the session lock it
    /// holds (`lock_key`; None: it holds none, and its row only expires),
    /// and returns what it saw.
    pub async fn replica_heartbeat(
        &self,
        id: &str,
        standby: bool,
        ttl: Duration,
        lock_key: Option<i64>,
    ) -> Result<Renewal> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "WITH old AS (
                             SELECT expires_at <= now() AS ended FROM scheduler.replicas WHERE id = $1
                         ), renewed AS (
                             INSERT INTO scheduler.replicas (id, standby, expires_at, lock_key)
                             VALUES ($1, $3, now() + make_interval(secs => $2), $4)
                             ON CONFLICT (id) DO UPDATE
                             SET expires_at = EXCLUDED.expires_at, standby = EXCLUDED.standby,
                                 lock_key = EXCLUDED.lock_key
                         )
                         SELECT coalesce((SELECT ended FROM old), false)",
                    )
                    .await?,
                &[&id, &ttl.as_secs_f64(), &standby, &lock_key],
            )
            .await?;
        let was_ended = row.get(0);
        let live = Self::live_replicas(&client).await?;
        Ok(Renewal { live, was_ended })
    }

    /// Ends the rows of the replicas other than `me` whose session lock is
    /// free (their process is gone), and returns the live active replicas'
    /// ids, sorted.
    pub async fn end_gone_replicas(&self, me: &str) -> Result<Vec<String>> {
        static END_GONE: LazyLock<String> = LazyLock::new(|| {
            format!(
                "UPDATE scheduler.replicas r SET expires_at = now()
                 WHERE r.expires_at > now() AND r.id <> $1 AND r.lock_key IS NOT NULL
                   AND NOT {}
                 RETURNING r.id",
                held_by_some_session("r.lock_key")
            )
        });
        let client = self.pool.get().await?;
        let gone = client
            .query(&client.prepare_cached(&END_GONE).await?, &[&me])
            .await?;
        for row in &gone {
            let id: String = row.get(0);
            tracing::warn!(replica = %id, "a replica's session ended: its process is gone; its leases are free now");
        }
        Self::live_replicas(&client).await
    }

    async fn live_replicas(client: &shepherd_platform::db::Client) -> Result<Vec<String>> {
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT id FROM scheduler.replicas
                         WHERE expires_at > now() AND NOT standby ORDER BY id",
                    )
                    .await?,
                &[],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Ends `id`'s membership now (shutdown), so its share moves at once.
    pub async fn replica_leave(&self, id: &str) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE scheduler.replicas SET expires_at = now() WHERE id = $1",
                    )
                    .await?,
                &[&id],
            )
            .await?;
        Ok(())
    }
}
