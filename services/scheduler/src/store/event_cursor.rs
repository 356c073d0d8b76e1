//! The shared cursor of the agent event stream.

use super::*;

impl Store {
    pub async fn load_cursor(&self) -> Result<u64> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached("SELECT last_seq FROM scheduler.event_cursor")
                    .await?,
                &[],
            )
            .await?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Moves the cursor forward (never back). Replicas share it: each
    /// handles the whole stream, and every effect of an event is either
    /// stored here or re-established by the level pass, so an event one
    /// replica handled counts as handled for all.
    pub async fn save_cursor(&self, seq: u64) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE scheduler.event_cursor SET last_seq = GREATEST(last_seq, $1)",
                    )
                    .await?,
                &[&i64::try_from(seq).unwrap_or(i64::MAX)],
            )
            .await?;
        Ok(())
    }
}
