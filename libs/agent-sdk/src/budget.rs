//! A running task's budget: the manager tells the agent when a budget the
//! task runs under is spent (`BudgetNotice`), and the handler sees it here.

use std::time::Duration;

use tokio::sync::watch;

/// A spent budget, as the manager said it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetSpent {
    /// What is spent, e.g. "workflow triage: cost 12.5 of 10 this day".
    pub summary: String,
    /// How long the task has to wrap up: the reference agent ends its
    /// process once it has passed.
    pub grace: Duration,
}

/// Whether a budget the task runs under is spent.
#[derive(Clone, Debug)]
pub struct Budget {
    pub(crate) spent: watch::Receiver<Option<BudgetSpent>>,
}

impl Budget {
    /// The spent budget, if one is.
    pub fn spent_now(&self) -> Option<BudgetSpent> {
        self.spent.borrow().clone()
    }

    /// Waits until a budget the task runs under is spent (never returns
    /// for a task whose budgets hold).
    pub async fn spent(&self) -> BudgetSpent {
        let mut spent = self.spent.clone();
        loop {
            if let Some(spent) = spent.borrow_and_update().clone() {
                return spent;
            }
            if spent.changed().await.is_err() {
                // The task is over: nothing will be said of it any more.
                std::future::pending::<()>().await;
            }
        }
    }
}
