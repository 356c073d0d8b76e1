//! Which scheduler replicas are alive: each renews its own row.

use std::time::Duration;

use super::Store;
use crate::error::Result;

impl Store {
    /// Renews `id`'s membership for `ttl` and returns the live active
    /// (not standby) replicas' ids, sorted.
    pub async fn replica_heartbeat(
        &self,
        id: &str,
        standby: bool,
        ttl: Duration,
    ) -> Result<Vec<String>> {
        let client = self.pool.get().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO scheduler.replicas (id, standby, expires_at)
                         VALUES ($1, $3, now() + make_interval(secs => $2))
                         ON CONFLICT (id) DO UPDATE
                         SET expires_at = EXCLUDED.expires_at, standby = EXCLUDED.standby",
                    )
                    .await?,
                &[&id, &ttl.as_secs_f64(), &standby],
            )
            .await?;
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
