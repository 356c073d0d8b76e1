//! Bringing runners back. Two of the three recovery mechanisms live here
//! (the third, resuming the event stream, is in `consumer`):
//!
//! * edge: `restart_workflows_for_agent` on `AgentRestarted` / `AgentReady`;
//! * level: `level_pass` compares desired runners (enabled workflows whose
//!   agent is ready) with live ones and fixes the difference.
//!
//! Both only ever call `Runners::ensure_running`, whose atomic claim makes
//! them idempotent and safe to race with each other and with the API.
//!
//! It is also the one place that acts on what the event stream says
//! (`on_event`, `record_outcomes`, `resync`): the consumer only reads the
//! stream, keeps the cursor and hands each message here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::agents::AgentView;
use crate::error::{Error, Result};
use crate::manager_client::{AgentEvent, ManagerClient};
use crate::runner::{Runners, StartOutcome};
use crate::settle::{self, SettleReport};
use crate::store::Outcome;
use crate::store::{InFlightScope, Store};
use tracing::Instrument;

/// How long WatchTasks can resume from: older task changes are pruned.
pub(crate) const TASK_CHANGE_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

pub(crate) struct Recovery {
    pub store: Store,
    pub runners: Arc<Runners>,
    pub agents: Arc<AgentView>,
    pub manager: ManagerClient,
    /// This replica's name as a lease owner.
    pub replica: String,
    /// A task in flight longer than this makes its runner STALLED.
    pub stall_after: Duration,
    pub budgets: crate::budgets::Budgets,
}

/// What a level pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LevelReport {
    pub desired: usize,
    pub started: usize,
    pub stopped: usize,
}

impl Recovery {
    /// `agent` was restarted into `generation`: one task for each workflow
    /// its restarts trigger, keyed by the generation (a redelivered event,
    /// or another replica handling the same one, finds it already there).
    pub(crate) async fn agent_restarted(
        &self,
        agent: Uuid,
        generation: u64,
        reason: &str,
    ) -> Result<()> {
        for workflow in self.store.restart_triggered(agent).await? {
            let fields = crate::model::TaskFields {
                title: format!("agent {agent} restarted (generation {generation})"),
                metadata: [
                    ("agent_id".to_owned(), agent.to_string()),
                    ("generation".to_owned(), generation.to_string()),
                    ("reason".to_owned(), reason.to_owned()),
                ]
                .into_iter()
                .collect(),
                ..Default::default()
            };
            let rendered = crate::template::render_task(&workflow, &fields, None)?;
            let key = format!("agent-restart:{agent}:{generation}");
            let (_, created) = self
                .store
                .insert_task(workflow.id, &key, &fields, &rendered, &Default::default())
                .await?;
            if created {
                tracing::info!(workflow = %workflow.id, %agent, generation, "task for an agent restart");
                self.runners.wake(workflow.id);
            }
        }
        Ok(())
    }

    /// Starts the runners missing for the agent's enabled workflows (one
    /// indexed query by agent id). Returns how many were started.
    pub(crate) async fn restart_workflows_for_agent(&self, agent: Uuid) -> Result<usize> {
        let workflows = self.store.enabled_workflows_of(&[agent]).await?;
        let started = workflows
            .iter()
            .filter(|&&(workflow, agent)| {
                self.runners.ensure_running(workflow, agent) == StartOutcome::Started
            })
            .count();
        if started > 0 {
            tracing::info!(%agent, started, "restarted missing runners for agent");
        }
        Ok(started)
    }

    /// Settles the tasks in flight of the workflows this replica runs (or
    /// nobody runs) that were dispatched at least `min_age` ago, and wakes
    /// the runners whose tasks changed.
    pub(crate) async fn settle_in_flight(
        &self,
        min_age: Duration,
        agent: Option<Uuid>,
    ) -> Result<SettleReport> {
        let scope = InFlightScope {
            owner: self.replica.clone(),
            workflow: None,
            agent,
            min_age,
        };
        let report = settle::settle_in_flight(&self.store, &self.manager, &scope).await?;
        for workflow in &report.workflows {
            self.runners.wake(*workflow);
        }
        Ok(report)
    }

    /// Marks the runners whose oldest task in flight is older than the
    /// stall threshold STALLED (and clears the others), and records each
    /// workflow's oldest in-flight age as a metric.
    pub(crate) async fn update_stalls(&self) -> Result<()> {
        let oldest = self.store.oldest_in_flight().await?;
        let mut stalls = HashMap::new();
        for task in oldest {
            crate::metrics::oldest_in_flight(task.workflow_id, task.age);
            if task.age >= self.stall_after {
                stalls.insert(
                    task.workflow_id,
                    format!(
                        "task {} in flight for {} s",
                        task.task_id,
                        task.age.as_secs()
                    ),
                );
            }
        }
        self.runners.set_stalls(stalls);
        Ok(())
    }

    /// The level-triggered pass.
    pub(crate) async fn level_pass(&self) -> Result<LevelReport> {
        let report = self.reconcile_runners().await;
        // The pass's lists (every enabled workflow of every ready agent)
        // are freed by now: their pages go back instead of staying
        // resident beside the runners.
        shepherd_platform::memory::release_free_memory();
        report
    }

    async fn reconcile_runners(&self) -> Result<LevelReport> {
        let ready = self.manager.ready_agents().await.map_err(|status| {
            Error::unavailable(format!("agent-manager unavailable: {}", status.message()))
        })?;
        self.agents.replace(&ready);
        let ready: Vec<Uuid> = ready.into_iter().collect();
        let desired = self.store.enabled_workflows_of(&ready).await?;
        let mut report = LevelReport {
            desired: desired.len(),
            ..LevelReport::default()
        };
        for &(workflow, agent) in &desired {
            if self.runners.ensure_running(workflow, agent) == StartOutcome::Started {
                report.started += 1;
            }
        }
        // Runners whose workflow is gone or disabled must not linger.
        let live = self.runners.live_workflows();
        if !live.is_empty() {
            let enabled: HashSet<Uuid> =
                self.store.enabled_among(&live).await?.into_iter().collect();
            for workflow in live.into_iter().filter(|id| !enabled.contains(id)) {
                self.runners.stop(workflow, "workflow disabled");
                report.stopped += 1;
            }
        }
        if report.started > 0 || report.stopped > 0 {
            tracing::info!(?report, "level pass fixed runners");
        }
        // Housekeeping rides along: the task change log keeps a week.
        if let Err(err) = self.store.prune_task_changes(TASK_CHANGE_RETENTION).await {
            tracing::warn!(error = %err, "pruning the task change log failed");
        }
        Ok(report)
    }

    /// Acts on one agent event (completions go through `record_outcomes`).
    pub(crate) async fn on_event(&self, agent: Uuid, event: AgentEvent) -> Result<()> {
        match event {
            AgentEvent::Ready => {
                self.agents.set_ready(agent, true);
                self.restart_workflows_for_agent(agent).await?;
            }
            AgentEvent::Restarted { generation, reason } => {
                self.agents.set_ready(agent, false);
                self.restart_workflows_for_agent(agent).await?;
                self.agent_restarted(agent, generation, &reason).await?;
                // The old session's tasks are decided by now or will be
                // reported again. A restart is where a task's fate is most
                // often decided out of this replica's sight (a session lost
                // with the node that held it), so ask about this agent's
                // tasks in flight rather than wait for the next level pass.
                self.settle(Duration::ZERO, Some(agent)).await;
            }
            AgentEvent::NotReady => self.agents.set_ready(agent, false),
            AgentEvent::TaskUsage {
                task_id,
                attempt,
                input_tokens,
                output_tokens,
                cost,
            } => {
                self.budgets
                    .usage(
                        agent,
                        &task_id,
                        attempt,
                        (input_tokens, output_tokens, cost),
                    )
                    .await?;
            }
            AgentEvent::BudgetDecided { key, approved } => {
                self.budgets.decided(&key, approved).await?;
            }
            AgentEvent::Deleted => {
                self.agents.set_ready(agent, false);
                let reason = format!("agent {agent} was deleted");
                for workflow in self.store.disable_workflows_of(agent, &reason).await? {
                    self.runners.stop(workflow, &reason);
                }
            }
            AgentEvent::TaskLost {
                task_id,
                attempt,
                reason,
            } if !self.held_elsewhere(&task_id) => {
                if let Some(workflow) = self.store.lost(&task_id, attempt, &reason).await? {
                    crate::metrics::task_finished("lost", None);
                    self.runners.wake(workflow);
                }
            }
            AgentEvent::TaskProgress {
                task_id,
                attempt,
                message,
                fraction,
                output,
            } if !self.held_elsewhere(&task_id) => {
                // Informational: a failed write costs a progress line, never
                // the stream.
                if let Err(err) = self
                    .store
                    .record_progress(&task_id, attempt, &message, fraction, &output)
                    .await
                {
                    tracing::warn!(task = %task_id, error = %err, "could not record task progress");
                }
            }
            // Completions are recorded in batches by `handle_batch`; a
            // standby leaves losses and progress to the lease holder.
            AgentEvent::TaskCompleted { .. }
            | AgentEvent::TaskLost { .. }
            | AgentEvent::TaskProgress { .. }
            | AgentEvent::Other => {}
        }
        Ok(())
    }

    /// Records the outcomes of a batch of completions in one statement and
    /// wakes their runners.
    pub(crate) async fn record_outcomes(&self, completions: &mut Vec<Outcome>) -> Result<()> {
        if completions.is_empty() {
            return Ok(());
        }
        let span = tracing::info_span!("record_outcomes", tasks = completions.len());
        let (workflows, finished) = self
            .store
            .complete_many(completions)
            .instrument(span)
            .await?;
        // Outcomes (and the chained tasks they made) are committed; nothing
        // after this point has acted on them yet.
        shepherd_platform::failpoint::hit("scheduler.after_outcome");
        // The commit notified the runners (when this replica's listener is
        // connected); otherwise they are woken here.
        for workflow in workflows {
            self.runners.wake_unless_notified(workflow);
        }
        for (state, seconds) in finished {
            crate::metrics::task_finished(state.as_str(), Some(seconds));
        }
        completions.clear();
        Ok(())
    }

    /// Events were missed for good: every task in flight is settled and a
    /// full level pass runs.
    pub(crate) async fn resync(&self) -> Result<()> {
        self.settle_in_flight(Duration::ZERO, None).await?;
        self.level_pass().await?;
        Ok(())
    }

    /// Settles tasks in flight (only `agent`'s, if given); a failure is
    /// retried by the next pass.
    pub(crate) async fn settle(&self, min_age: Duration, agent: Option<Uuid>) {
        if let Err(err) = self.settle_in_flight(min_age, agent).await {
            tracing::warn!(error = %err, "settling tasks in flight failed; the next pass retries");
        }
    }

    /// Whether another replica runs the workflow of `task_id` (ids are
    /// "<workflow_id>:<key>"), so its events are that replica's to handle.
    pub(crate) fn held_elsewhere(&self, task_id: &str) -> bool {
        crate::model::workflow_of_task(task_id)
            .is_some_and(|workflow| self.runners.is_standby(workflow))
    }
}
