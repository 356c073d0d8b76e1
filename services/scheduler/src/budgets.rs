//! The budget actor: runs the budget pass (see `Store::budget_pass`) every
//! second and at once when usage arrives, then hands each new spent budget
//! to the agent-manager (its approval, its `BudgetExhausted`, the notice to
//! running tasks) until the manager has it. The pass holds dispatch by
//! itself; the manager's part only tells people and agents.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::Result;
use crate::manager_client::ManagerClient;
use crate::model::budget::Scope;
use crate::store::Store;

/// How often budgets are looked at without being woken (task counts and
/// task-seconds grow without any report).
const PASS_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(crate) struct Budgets {
    store: Store,
    manager: ManagerClient,
    wake: Arc<Notify>,
}

impl Budgets {
    pub(crate) fn new(store: Store, manager: ManagerClient) -> Self {
        Self {
            store,
            manager,
            wake: Arc::new(Notify::new()),
        }
    }

    /// An agent reported an attempt's usage (totals): recorded, and the
    /// budgets looked at now.
    pub(crate) async fn usage(
        &self,
        agent: Uuid,
        task_id: &str,
        attempt: u32,
        totals: (u64, u64, f64),
    ) -> Result<()> {
        self.store
            .record_usage(task_id, attempt, agent, totals)
            .await?;
        self.wake.notify_one();
        Ok(())
    }

    /// A budget's approval was decided.
    pub(crate) async fn decided(&self, key: &str, approved: bool) -> Result<()> {
        self.store
            .budget_decided(key, approved, SystemTime::now())
            .await?;
        self.wake.notify_one();
        Ok(())
    }

    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(PASS_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
                _ = self.wake.notified() => {}
            }
            if let Err(err) = self.pass().await {
                tracing::warn!(error = %err, "budget pass failed");
            }
        }
    }

    async fn pass(&self) -> Result<()> {
        self.store.budget_pass(SystemTime::now()).await?;
        for (episode, agent, grace) in self.store.unnotified_exhaustions().await? {
            let workflow = match episode.scope {
                Scope::Workflow => episode.subject.to_string(),
                Scope::Agent => String::new(),
            };
            let summary = episode.describe();
            // Tests only: a crash after the episode is stored, before the
            // manager hears of it.
            shepherd_platform::failpoint::hit("scheduler.before_budget_report");
            match self
                .manager
                .report_budget_exhausted(agent, workflow, &episode.key, summary, grace)
                .await
            {
                Ok(()) => self.store.exhaustion_notified(&episode.key).await?,
                // Asked again next pass.
                Err(err) => {
                    tracing::warn!(key = %episode.key, error = %err, "could not report a spent budget")
                }
            }
        }
        Ok(())
    }
}
