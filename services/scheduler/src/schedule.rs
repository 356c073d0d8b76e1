//! Schedule triggers (interval, cron, delay): each due tick records one
//! pending task, keyed by the tick, so a tick can never make two tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::runner::Runners;
use crate::store::Store;

/// How often due ticks are looked for; also the schedules' resolution.
const CHECK_EVERY: Duration = Duration::from_millis(250);

pub(crate) async fn run(store: Store, runners: Arc<Runners>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match store.fire_due_ticks(100).await {
            Ok(fired) => {
                for workflow in fired {
                    runners.wake(workflow);
                }
            }
            Err(err) => tracing::warn!(error = %err, "firing schedule ticks failed"),
        }
    }
}
