//! The scheduler's operations behind its API: validation that needs the
//! store or the agent-manager, and keeping runners in step with workflows.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::explain::{AgentFacts, Facts, InFlightFacts, Verdict};
use crate::manager_client::{ManagerClient, ManagerError, RemoteTask};
use crate::model::{ConcurrencyKey, KeyUsage, Task, TaskFields, TaskState, Trigger, Workflow};
use crate::runner::{RunnerInfo, RunnerState, Runners};
use crate::store::{
    NewWorkflow, RunnerWorkflow, Store, TaskCursor, TaskEventFilter, WorkflowFilter,
};
use crate::task_watch::{TaskWatch, WatchItem};
use crate::template;
use crate::webhook::{Delivery, Refused};
use shepherd_platform::error::Error as Shared;

pub(crate) struct Scheduler {
    pub store: Store,
    pub runners: Arc<Runners>,
    pub manager: ManagerClient,
    pub task_watch: TaskWatch,
}

/// Which fields an update changes.
/// A workflow's diagnosis: the facts looked at and the verdict.
pub(crate) struct Diagnosis {
    pub workflow: Workflow,
    pub verdict: Verdict,
    pub summary: String,
    pub facts: Facts,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UpdateMask {
    pub name: bool,
    pub enabled: bool,
    pub trigger: bool,
    pub prompt_template: bool,
    pub max_concurrency: bool,
    pub max_attempts: bool,
    pub task_timeout: bool,
    pub retry: bool,
    pub tool_policy: bool,
    pub concurrency_keys: bool,
}

/// Why a webhook delivery made no task.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Failed(#[from] Error),
}

fn new_secret() -> Result<String> {
    shepherd_platform::auth::random_secret()
        .map_err(|err| Error::internal(format!("no randomness for a webhook secret: {err}")))
}

impl Scheduler {
    /// Whether the agent exists in the agent-manager (UNAVAILABLE when it
    /// cannot be asked).
    async fn agent_known(&self, agent: Uuid) -> Result<bool> {
        self.manager.agent_exists(agent).await.map_err(|status| {
            Error::unavailable(format!(
                "cannot check agent {agent} with the agent-manager ({}); retry when it is reachable",
                status.message()
            ))
        })
    }

    /// Fails (NOT_FOUND) unless the agent exists: for calls about the agent
    /// itself.
    async fn find_agent(&self, agent: Uuid) -> Result<()> {
        if self.agent_known(agent).await? {
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "agent {agent} not found in the agent-manager"
            )))
        }
    }

    /// Fails (FAILED_PRECONDITION) unless the agent exists: for a workflow
    /// that names it.
    async fn require_agent(&self, agent: Uuid) -> Result<()> {
        if self.agent_known(agent).await? {
            Ok(())
        } else {
            Err(Error::failed_precondition(format!(
                "agent {agent} does not exist in the agent-manager; create the agent first (or point the workflow at another agent)"
            )))
        }
    }

    /// Creates a workflow; a webhook-triggered one comes with its secret,
    /// returned this once.
    pub(crate) async fn create_workflow(
        &self,
        new: NewWorkflow,
    ) -> Result<(Workflow, Option<String>)> {
        self.require_agent(new.agent_id)
            .await
            .map_err(|err| match err {
                Error::Common(Shared::FailedPrecondition(reason)) => {
                    Error::invalid("workflow.agent_id", reason)
                }
                other => other,
            })?;
        self.require_parent(&new.trigger).await?;
        let secret = match new.trigger {
            Trigger::Webhook(_) => Some(new_secret()?),
            _ => None,
        };
        let workflow = self.store.insert_workflow(&new, secret.as_deref()).await?;
        if workflow.enabled {
            self.runners.ensure_running(workflow.id, workflow.agent_id);
        }
        Ok((workflow, secret))
    }

    /// A chain's parent workflow must exist.
    async fn require_parent(&self, trigger: &Trigger) -> Result<()> {
        let Trigger::Chain { parent, .. } = trigger else {
            return Ok(());
        };
        match self.store.get_workflow(*parent).await {
            Err(Error::Common(Shared::NotFound(reason))) => Err(Error::invalid(
                "workflow.trigger.chain.parent_workflow_id",
                reason,
            )),
            other => other.map(drop),
        }
    }

    /// Gives a webhook workflow a new secret (returned this once); the old
    /// one stops working at once.
    pub(crate) async fn rotate_webhook_secret(&self, id: Uuid) -> Result<(Workflow, String)> {
        let workflow = self.store.get_workflow(id).await?;
        if !matches!(workflow.trigger, Trigger::Webhook(_)) {
            return Err(Error::failed_precondition(format!(
                "workflow {id} is not triggered by webhooks; set a webhook trigger first"
            )));
        }
        let secret = new_secret()?;
        let workflow = self.store.set_webhook_secret(id, &secret).await?;
        Ok((workflow, secret))
    }

    /// A webhook delivery to the workflow `reference` (id or name): the
    /// task it made (or made before, for a redelivery).
    pub(crate) async fn deliver(
        &self,
        reference: &str,
        delivery: &Delivery<'_>,
    ) -> std::result::Result<Task, DeliveryError> {
        let (workflow, secret) = self
            .store
            .webhook_target(reference)
            .await?
            .ok_or(Refused::UnknownHook)?;
        let Trigger::Webhook(trigger) = &workflow.trigger else {
            return Err(Refused::UnknownHook.into());
        };
        let (fields, key) =
            trigger.accept(secret.as_deref(), delivery, std::time::SystemTime::now())?;
        Ok(self
            .trigger_on(&workflow, Some(key), fields, None, 0)
            .await?)
    }

    pub(crate) async fn get_workflow(&self, id: Uuid) -> Result<Workflow> {
        self.store.get_workflow(id).await
    }

    pub(crate) async fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        limit: i64,
    ) -> Result<Vec<Workflow>> {
        self.store.list_workflows(filter, limit).await
    }

    /// Applies `patch`'s masked fields to the stored workflow.
    pub(crate) async fn update_workflow(
        &self,
        patch: Workflow,
        mask: UpdateMask,
    ) -> Result<Workflow> {
        let mut workflow = self.store.get_workflow(patch.id).await?;
        let was_enabled = workflow.enabled;
        if mask.name {
            workflow.name = patch.name;
        }
        if mask.enabled {
            workflow.enabled = patch.enabled;
            if patch.enabled {
                workflow.disabled_reason.clear();
            }
        }
        if mask.trigger {
            self.require_parent(&patch.trigger).await?;
            workflow.trigger = patch.trigger;
        }
        if mask.prompt_template {
            workflow.prompt_template = patch.prompt_template;
        }
        if mask.max_concurrency {
            workflow.max_concurrency = patch.max_concurrency;
        }
        if mask.max_attempts {
            workflow.max_attempts = patch.max_attempts;
        }
        if mask.task_timeout {
            workflow.task_timeout = patch.task_timeout;
        }
        if mask.retry {
            workflow.retry = patch.retry;
        }
        if mask.tool_policy {
            workflow.tool_policy = patch.tool_policy;
        }
        if mask.concurrency_keys {
            workflow.concurrency_keys = patch.concurrency_keys;
        }
        workflow
            .trigger
            .check_concurrency(workflow.max_concurrency)?;
        if workflow.enabled && !was_enabled {
            // A workflow never points at a deleted agent: enabling checks
            // it (as creating does).
            self.require_agent(workflow.agent_id).await?;
        }
        let reschedule = mask.trigger || (workflow.enabled && !was_enabled);
        let workflow = self.store.update_workflow(&workflow, reschedule).await?;
        if workflow.enabled {
            self.runners.ensure_running(workflow.id, workflow.agent_id);
            // Concurrency may have grown: let the runner look again.
            self.runners.wake(workflow.id);
        } else {
            self.runners.stop(workflow.id, "workflow disabled");
        }
        Ok(workflow)
    }

    pub(crate) async fn delete_workflow(&self, id: Uuid) -> Result<()> {
        self.store.delete_workflow(id).await?;
        self.runners.remove(id);
        Ok(())
    }

    /// Records a task (accepted means stored) and wakes the runner.
    /// Cancels a task: a pending one at once; a dispatched one through its
    /// agent (it becomes CANCELLED when the agent reports). Idempotent: a
    /// finished task is returned as it is.
    pub(crate) async fn cancel_task(&self, id: &str) -> Result<Task> {
        if let Some(task) = self.store.cancel_task(id, TaskState::Pending).await? {
            return Ok(task);
        }
        let task = self.store.get_task(id).await?;
        if task.state != TaskState::Dispatched {
            return Ok(task);
        }
        let workflow = self.store.get_workflow(task.workflow_id).await?;
        let answer = self.manager.cancel_task(workflow.agent_id, id).await;
        match answer {
            // Told to stop; CANCELLED arrives with the agent's report.
            Ok(RemoteTask::InFlight { .. }) => Ok(task),
            // Finished meanwhile: its outcome is on its way.
            Ok(RemoteTask::Completed { .. }) => Ok(task),
            // Nobody runs it (never delivered, or lost with its session).
            Ok(RemoteTask::Unknown | RemoteTask::Lost { .. }) | Err(ManagerError::Refused(_)) => {
                let cancelled = self.store.cancel_task(id, TaskState::Dispatched).await?;
                self.runners.wake(task.workflow_id);
                match cancelled {
                    Some(task) => Ok(task),
                    None => self.store.get_task(id).await,
                }
            }
            Err(err @ ManagerError::Unavailable(_)) => Err(Error::unavailable(format!(
                "cannot reach the agent running task {id} ({err}); retry"
            ))),
        }
    }

    /// Records a pending task; `timeout` may shorten the workflow's task
    /// timeout for it.
    pub(crate) async fn trigger(
        &self,
        workflow: Uuid,
        key: Option<String>,
        fields: TaskFields,
        timeout: Option<std::time::Duration>,
        priority: i32,
    ) -> Result<Task> {
        let workflow = self.store.get_workflow(workflow).await?;
        self.trigger_on(&workflow, key, fields, timeout, priority)
            .await
    }

    /// Enqueues a task of `workflow` (as read by the caller).
    async fn trigger_on(
        &self,
        workflow: &Workflow,
        key: Option<String>,
        fields: TaskFields,
        timeout: Option<std::time::Duration>,
        priority: i32,
    ) -> Result<Task> {
        if !workflow.enabled && !workflow.disabled_reason.is_empty() {
            // Disabled by the system (its agent was deleted): a task would
            // never run.
            return Err(Error::failed_precondition(format!(
                "workflow {} is disabled: {}; fix that, then enable it",
                workflow.id, workflow.disabled_reason
            )));
        }
        let key = key.unwrap_or_else(|| Uuid::new_v4().to_string());
        let rendered = crate::model::Rendered {
            priority,
            ..template::render_task(workflow, &fields, timeout)?
        };
        // The task's dispatch will continue this call's trace.
        let trace = shepherd_platform::telemetry::propagation::current_map();
        let (task, _created) = self
            .store
            .insert_task(workflow.id, &key, &fields, &rendered, &trace)
            .await?;
        self.runners.wake(workflow.id);
        Ok(task)
    }

    pub(crate) async fn pause_workflow(
        &self,
        id: Uuid,
        by: &str,
        reason: &str,
        mode: crate::model::WhilePaused,
    ) -> Result<Workflow> {
        self.store.pause_workflow(id, by, reason, mode).await
    }

    pub(crate) async fn resume_workflow(&self, id: Uuid) -> Result<Workflow> {
        let workflow = self.store.resume_workflow(id).await?;
        // Its queued tasks are claimable again (the database notifies the
        // other replicas).
        self.runners.wake(id);
        Ok(workflow)
    }

    /// Pauses dispatch to an agent the agent-manager knows.
    pub(crate) async fn pause_agent(
        &self,
        agent: Uuid,
        by: &str,
        reason: &str,
    ) -> Result<crate::model::AgentPause> {
        self.find_agent(agent).await?;
        self.store.pause_agent(agent, by, reason).await
    }

    /// Resumes dispatch to an agent (its workflows' runners are woken by
    /// the database, on every replica).
    pub(crate) async fn resume_agent(&self, agent: Uuid) -> Result<()> {
        self.store.resume_agent(agent).await.map(drop)
    }

    pub(crate) async fn agent_pauses(&self) -> Result<Vec<crate::model::AgentPause>> {
        self.store.agent_pauses(None).await
    }

    /// Sets the budget of a workflow or agent that exists.
    pub(crate) async fn put_budget(
        &self,
        budget: &crate::model::budget::Budget,
    ) -> Result<crate::store::BudgetView> {
        use crate::model::budget::Scope;
        match budget.scope {
            Scope::Workflow => drop(self.store.get_workflow(budget.subject).await?),
            Scope::Agent => self.find_agent(budget.subject).await?,
        }
        self.store.put_budget(budget).await?;
        self.store
            .budget_views(Some(&[budget.subject]))
            .await?
            .into_iter()
            .find(|view| view.budget.scope == budget.scope)
            .ok_or_else(|| Error::internal("a budget just stored is gone"))
    }

    pub(crate) async fn budgets(&self) -> Result<Vec<crate::store::BudgetView>> {
        self.store.budget_views(None).await
    }

    pub(crate) async fn delete_budget(
        &self,
        scope: crate::model::budget::Scope,
        subject: Uuid,
    ) -> Result<()> {
        if self.store.delete_budget(scope, subject).await? {
            // Its holds go with the next pass (which this starts).
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "{} {subject} has no budget",
                scope.as_str()
            )))
        }
    }

    /// Makes the tasks of the schedule's ticks in the range that have none.
    pub(crate) async fn backfill(
        &self,
        id: Uuid,
        from: std::time::SystemTime,
        to: std::time::SystemTime,
    ) -> Result<crate::store::Backfilled> {
        let done = self.store.backfill(id, from, to).await?;
        if done.created > 0 {
            self.runners.wake(id);
        }
        Ok(done)
    }

    /// Defines a key or changes its limit; the key as it is then.
    pub(crate) async fn put_key(&self, key: &ConcurrencyKey) -> Result<KeyUsage> {
        let key = self.store.put_key(key).await?;
        let mut usage = self.store.list_keys(Some(&key.name)).await?;
        usage
            .pop()
            .ok_or_else(|| Error::internal("a key just stored is gone"))
    }

    pub(crate) async fn list_keys(&self) -> Result<Vec<KeyUsage>> {
        self.store.list_keys(None).await
    }

    pub(crate) async fn delete_key(&self, name: &str) -> Result<()> {
        if self.store.delete_key(name).await? {
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "concurrency key {name:?} not found"
            )))
        }
    }

    /// A page of a workflow's tasks (NOT_FOUND for an unknown workflow
    /// rather than an empty list), with each task's position for paging.
    pub(crate) async fn list_tasks(
        &self,
        workflow: Uuid,
        state: Option<TaskState>,
        dead_letter_only: bool,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<(i64, Task)>> {
        self.get_workflow(workflow).await?;
        self.store
            .list_tasks(workflow, state, dead_letter_only, after, limit)
            .await
    }

    /// Follows the task change log from `after` (see `task_watch`).
    pub(crate) fn watch_tasks(
        &self,
        after: TaskCursor,
        filter: TaskEventFilter,
    ) -> tokio::sync::mpsc::Receiver<Result<WatchItem>> {
        self.task_watch.watch(after, filter)
    }

    pub(crate) async fn get_task(&self, id: &str) -> Result<Task> {
        self.store.get_task(id).await
    }

    /// Every workflow's runner (of one agent, or of all) as this replica
    /// sees it. A workflow without a live runner here that another replica
    /// runs (it holds the workflow's lease) shows as standby, naming it.
    /// "Why isn't it running?" (see `explain`).
    pub(crate) async fn explain(&self, id: Uuid) -> Result<Diagnosis> {
        let workflow = self.get_workflow(id).await?;
        let queue = self.store.queue_facts(id).await?;
        let agent = match self.manager.agent_facts(workflow.agent_id).await {
            Ok(agent) => agent,
            Err(err) => AgentFacts {
                status: "unknown".into(),
                message: format!("the agent-manager could not be asked: {}", err.message()),
                desired_running: true,
                generation: 0,
                since: None,
            },
        };
        // Unknown when the manager cannot be asked (the agent's facts say
        // so already).
        let approvals = self.manager.pending_approvals(id).await.unwrap_or_default();
        let runner = self
            .runner_views(vec![RunnerWorkflow::from(&workflow)])
            .await?
            .pop()
            .map(|(_, info)| info);
        let facts = Facts {
            enabled: workflow.enabled,
            disabled_reason: workflow.disabled_reason.clone(),
            agent,
            runner_state: runner.as_ref().map_or(RunnerState::Stopped, |r| r.state),
            runner_reason: runner.map(|r| r.reason).unwrap_or_default(),
            lease_holder: queue.lease.clone(),
            me: self.runners.replica().to_owned(),
            max_concurrency: workflow.max_concurrency,
            in_flight: queue
                .in_flight
                .iter()
                .map(|(task_id, attempt, age)| InFlightFacts {
                    task_id: task_id.clone(),
                    attempt: *attempt,
                    age: *age,
                })
                .collect(),
            in_flight_count: queue.in_flight_count,
            pending: queue.pending,
            due: queue.due,
            oldest_pending: queue.oldest_pending.clone(),
            next_fire: queue.next_fire,
            last_error: queue.last_error.clone(),
            approvals,
            keys: self.store.key_facts(id).await?,
            budget_spent: self
                .store
                .spent_budget(workflow.id, workflow.agent_id)
                .await?
                .map(|(episode, budget)| {
                    (
                        episode.describe(),
                        budget.resets_at(std::time::SystemTime::now()),
                    )
                }),
            agent_paused: self
                .store
                .agent_pause(workflow.agent_id)
                .await?
                .map(|pause| (pause.by, pause.since, pause.reason)),
            paused: workflow
                .pause
                .as_ref()
                .map(|pause| (pause.by.clone(), pause.since, pause.reason.clone())),
        };
        let (verdict, summary) = crate::explain::judge(&facts);
        Ok(Diagnosis {
            workflow,
            verdict,
            summary,
            facts,
        })
    }

    pub(crate) async fn runners(
        &self,
        agent: Option<Uuid>,
    ) -> Result<Vec<(RunnerWorkflow, RunnerInfo)>> {
        let workflows = self.store.runner_workflows(agent).await?;
        self.runner_views(workflows).await
    }

    /// The runners of `workflows` as this replica sees them: its own, and
    /// STANDBY naming the replica that holds a lease it does not.
    async fn runner_views(
        &self,
        workflows: Vec<RunnerWorkflow>,
    ) -> Result<Vec<(RunnerWorkflow, RunnerInfo)>> {
        let views: Vec<(RunnerWorkflow, RunnerInfo)> = workflows
            .into_iter()
            .map(|workflow| {
                let info = self.local_runner(&workflow);
                (workflow, info)
            })
            .collect();
        let elsewhere: Vec<Uuid> = views
            .iter()
            .filter(|(_, info)| info.state == RunnerState::Stopped)
            .map(|(workflow, _)| workflow.id)
            .collect();
        if elsewhere.is_empty() {
            return Ok(views);
        }
        let holders: HashMap<Uuid, String> = self
            .store
            .lease_holders(&elsewhere)
            .await?
            .into_iter()
            .filter(|(_, owner)| owner != self.runners.replica())
            .collect();
        Ok(views
            .into_iter()
            .map(|(workflow, info)| match holders.get(&workflow.id) {
                Some(owner) if info.state == RunnerState::Stopped => {
                    let info = RunnerInfo {
                        state: RunnerState::Standby,
                        reason: format!("replica {owner} runs it"),
                        ..info
                    };
                    (workflow, info)
                }
                _ => (workflow, info),
            })
            .collect())
    }

    /// This replica's runner of `workflow`, with a default for a
    /// never-started one.
    fn local_runner(&self, workflow: &RunnerWorkflow) -> RunnerInfo {
        self.runners
            .info(workflow.id)
            .unwrap_or_else(|| RunnerInfo {
                state: RunnerState::Stopped,
                reason: if workflow.enabled {
                    "not started yet".into()
                } else {
                    "workflow disabled".into()
                },
                since: workflow.updated_at,
                starts: 0,
            })
    }
}
