//! Tool approvals: an agent asks before it uses a tool its workflow puts on
//! the `ask` list, someone decides, and the agent gets the answer over its
//! session.
//!
//! Durability comes from two owners that never lose track:
//! * the row in `agent_manager.approvals`, whose state changes once, by one
//!   conditional UPDATE (a person's decision, the expiry, or the withdrawal
//!   when the task stops needing it: whichever comes first);
//! * the agent, which keeps every unanswered request and sends it again on
//!   each new session and every `RESEND` while waiting. A request that was
//!   answered already is answered again from the row, so an answer lost to
//!   a disconnect, a manager restart or a session moving to another node
//!   arrives in the end.
//!
//! The quick path: every decision is an `ApprovalDecided` event, and each
//! node's courier (`courier`, beside the sessions) passes those about
//! agents whose session it holds to that session at once, whichever node
//! decided. The values (an approval, a request, an answer) are
//! `approval`'s.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::Result;
use crate::events::{Event, EventLog};
use crate::model::approval::{
    Answer, Approval, ApprovalAsk, ApprovalFilter, ApprovalState, Decider, Decision,
    MAX_COMMENT_BYTES, decider_is_the_asker, refusal, reused,
};
use crate::store::Store;

/// Most approvals one agent may have pending: a runaway agent cannot fill
/// the table.
const MAX_PENDING_PER_AGENT: i64 = 100;
/// Longest grace a spent budget gives its running tasks.
pub(crate) const MAX_BUDGET_GRACE: Duration = Duration::from_secs(3600);
/// How often a node resolves expired and withdrawn approvals.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The approvals of this node's agents and of the API.
#[derive(Clone)]
pub(crate) struct Approvals {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    events: EventLog,
    /// How long an approval waits for a decision before it is denied.
    timeout: Duration,
}

impl Approvals {
    pub(crate) fn new(store: Store, events: EventLog, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                events,
                timeout,
            }),
        }
    }

    /// Takes an agent's request: stores it (logging `ApprovalRequested`
    /// the first time) and returns the answer to send at once, if there
    /// is one already. `runs_task`: the asking session runs the task; a
    /// request about any other task is only looked up, never stored.
    pub(crate) async fn ask(
        &self,
        agent_id: Uuid,
        generation: u64,
        ask: ApprovalAsk,
        runs_task: bool,
    ) -> Result<Option<Answer>> {
        let inner = &self.inner;
        if !runs_task {
            return Ok(
                match inner
                    .store
                    .approval_by_request(agent_id, &ask.request_id)
                    .await?
                {
                    Some(approval) if !approval.answers(&ask) => Some(reused(&ask.request_id)),
                    Some(approval) if approval.state != ApprovalState::Pending => {
                        Some(approval.answer())
                    }
                    // The withdrawal pass answers it once it sees the task
                    // is gone.
                    Some(_) => None,
                    None => Some(refusal(
                        &ask.request_id,
                        format!(
                            "task {} attempt {} does not run on this agent's session",
                            ask.task_id, ask.attempt
                        ),
                    )),
                },
            );
        }
        let stored = inner
            .store
            .request_approval(
                agent_id,
                generation,
                &ask,
                inner.timeout,
                MAX_PENDING_PER_AGENT,
            )
            .await?;
        let Some((approval, created)) = stored else {
            return Ok(Some(refusal(
                &ask.request_id,
                format!("the agent has {MAX_PENDING_PER_AGENT} approvals pending already"),
            )));
        };
        if !approval.answers(&ask) {
            return Ok(Some(reused(&ask.request_id)));
        }
        if created {
            tracing::info!(agent = %agent_id, approval = %approval.id, tool = %approval.tool, task = %approval.task_id, "approval requested");
            inner
                .events
                .append(
                    agent_id,
                    generation,
                    Event::ApprovalRequested(approval.clone()),
                )
                .await?;
        }
        Ok((approval.state != ApprovalState::Pending).then(|| approval.answer()))
    }

    /// Decides a pending approval; one decided before is returned as it
    /// stands. The agent hears of it through the `ApprovalDecided` event.
    /// A credential handed to an agent (`decider.agent`) can never decide
    /// that agent's approvals.
    pub(crate) async fn decide(
        &self,
        id: Uuid,
        decision: Decision,
        comment: &str,
        decider: &Decider,
    ) -> Result<Approval> {
        shepherd_platform::validate::text("comment", comment, MAX_COMMENT_BYTES)?;
        if let Some(agent) = &decider.agent {
            // An approval's agent never changes: reading it first races
            // with nothing.
            let approval = self.inner.store.get_approval(id).await?;
            if decider_is_the_asker(agent, &approval) {
                return Err(crate::error::Error::permission_denied(format!(
                    "{} was handed to agent {}, whose approval this is: an agent never decides its own",
                    decider.name, approval.agent_id
                )));
            }
        }
        let decided_by = decider.name.as_str();
        let state = match decision {
            Decision::Approve => ApprovalState::Approved,
            Decision::Deny => ApprovalState::Denied,
        };
        let (approval, decided) = self
            .inner
            .store
            .decide_approval(id, state, comment, decided_by)
            .await?;
        if decided {
            tracing::info!(approval = %id, state = state.as_str(), %decided_by, "approval decided");
            self.decided(&approval).await?;
        }
        Ok(approval)
    }

    /// A budget of the agent (or of its workflow) is spent: raises the
    /// approval "continue past the budget?" once per `key` (no task: it
    /// only expires, which is a denial) and logs `BudgetExhausted` while it
    /// is pending, so that a retried call (its answer was lost) tells the
    /// agent's tasks even if the first was cut short after the approval.
    pub(crate) async fn budget_exhausted(
        &self,
        agent_id: Uuid,
        workflow_id: String,
        key: String,
        summary: String,
        grace: Duration,
    ) -> Result<Approval> {
        let inner = &self.inner;
        let agent = inner
            .store
            .get_agent(agent_id)
            .await?
            .ok_or(crate::error::Error::AgentNotFound(agent_id))?;
        let ask = ApprovalAsk {
            request_id: key,
            task_id: String::new(),
            attempt: 0,
            workflow_id,
            tool: shepherd_proto::BUDGET_APPROVAL_TOOL.to_owned(),
            input: summary,
            reason: "continue past the budget?".to_owned(),
        }
        .bounded()
        .map_err(|why| crate::error::Error::invalid("key, summary", why))?;
        let stored = inner
            .store
            .request_approval(
                agent_id,
                agent.generation,
                &ask,
                inner.timeout,
                MAX_PENDING_PER_AGENT,
            )
            .await?;
        let Some((approval, created)) = stored else {
            return Err(crate::error::Error::failed_precondition(format!(
                "agent {agent_id} has {MAX_PENDING_PER_AGENT} approvals pending already"
            )));
        };
        if !approval.answers(&ask) {
            return Err(crate::error::Error::failed_precondition(format!(
                "key {:?} names another approval",
                ask.request_id
            )));
        }
        // Tests only: a crash after the approval is stored, before its events.
        shepherd_platform::failpoint::hit("manager.between_budget_approval_and_event");
        if created {
            tracing::info!(agent = %agent_id, approval = %approval.id, "budget approval requested");
            inner
                .events
                .append(
                    agent_id,
                    agent.generation,
                    Event::ApprovalRequested(approval.clone()),
                )
                .await?;
        }
        if approval.state == ApprovalState::Pending {
            inner
                .events
                .append(
                    agent_id,
                    agent.generation,
                    Event::BudgetExhausted {
                        workflow_id: approval.workflow_id.clone(),
                        summary: approval.input.clone(),
                        approval_id: approval.id,
                        grace,
                    },
                )
                .await?;
        }
        Ok(approval)
    }

    pub(crate) async fn get(&self, id: Uuid) -> Result<Approval> {
        self.inner.store.get_approval(id).await
    }

    pub(crate) async fn list(&self, filter: &ApprovalFilter, limit: i64) -> Result<Vec<Approval>> {
        self.inner.store.list_approvals(filter, limit).await
    }

    /// Runs this node's part until shutdown: resolves stale approvals
    /// every `SWEEP_INTERVAL` (the courier passes decisions on).
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        self.sweep(shutdown).await;
    }

    /// Expires approvals nobody decided in time and withdraws those whose
    /// task attempt stopped running. Level-triggered: whatever state a
    /// crash left, the next pass finds it.
    async fn sweep(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let resolved = match self
                .inner
                .store
                .resolve_stale_approvals(self.inner.timeout)
                .await
            {
                Ok(resolved) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("resolving stale approvals again");
                    }
                    resolved
                }
                // Once per outage, not once a second: the pass retries.
                Err(err) if failing => {
                    tracing::debug!(error = %err, "could not resolve stale approvals; retrying");
                    continue;
                }
                Err(err) => {
                    failing = true;
                    tracing::warn!(error = %err, "could not resolve stale approvals; retrying every second");
                    continue;
                }
            };
            for approval in resolved {
                tracing::info!(approval = %approval.id, state = approval.state.as_str(), comment = %approval.comment, "approval resolved");
                if let Err(err) = self.decided(&approval).await {
                    tracing::warn!(approval = %approval.id, error = %err, "could not log an approval's resolution; the agent still gets it when it asks again");
                }
            }
        }
    }

    async fn decided(&self, approval: &Approval) -> Result<()> {
        self.inner
            .events
            .append(
                approval.agent_id,
                approval.generation,
                Event::ApprovalDecided(approval.clone()),
            )
            .await
            .map(drop)
    }
}
