//! `shepherd workflows ...`.

use std::time::Duration;

use shepherd_proto::scheduler::v1 as sched;

use crate::cli::{CreateWorkflow, TriggerWorkflow, WorkflowCommand};
use crate::clients::{Clients, UsageError};
use crate::render;

impl Clients {
    pub(super) async fn workflows(&mut self, command: WorkflowCommand) -> anyhow::Result<()> {
        let output = self.output;
        let workflow = match command {
            WorkflowCommand::Create(create) => self.create_workflow(create).await?,
            WorkflowCommand::List { agent, enabled } => {
                let agent_id = match agent {
                    Some(agent) => self.agent_id(&agent).await?,
                    None => String::new(),
                };
                let all = self.all_workflows(agent_id, enabled).await?;
                render::many(output, &all);
                return Ok(());
            }
            WorkflowCommand::Get { workflow } => {
                let workflow_id = self.workflow_id(&workflow).await?;
                let workflow = self
                    .workflows
                    .get_workflow(sched::GetWorkflowRequest { workflow_id })
                    .await?
                    .into_inner();
                let budget = self.budget_of(&workflow.id, "").await;
                render::one_with_budget(output, &workflow, budget.as_ref());
                return Ok(());
            }
            WorkflowCommand::Pause {
                workflow,
                reason,
                queue,
            } => {
                let workflow_id = self.workflow_id(&workflow).await?;
                let while_paused = if queue {
                    sched::WhilePaused::Queue
                } else {
                    sched::WhilePaused::Skip
                };
                self.workflows
                    .pause_workflow(sched::PauseWorkflowRequest {
                        workflow_id,
                        reason,
                        while_paused: while_paused as i32,
                    })
                    .await?
                    .into_inner()
            }
            WorkflowCommand::Resume { workflow } => {
                let workflow_id = self.workflow_id(&workflow).await?;
                self.workflows
                    .resume_workflow(sched::ResumeWorkflowRequest { workflow_id })
                    .await?
                    .into_inner()
            }
            WorkflowCommand::Backfill { workflow, from, to } => {
                let workflow_id = self.workflow_id(&workflow).await?;
                let to = to.unwrap_or_else(std::time::SystemTime::now);
                let done = self
                    .workflows
                    .backfill_workflow(sched::BackfillWorkflowRequest {
                        workflow_id,
                        from: Some(from.into()),
                        to: Some(to.into()),
                    })
                    .await?
                    .into_inner();
                eprintln!(
                    "{} ticks in the range: {} tasks created, {} had theirs already",
                    done.ticks,
                    done.created,
                    done.ticks.saturating_sub(done.created)
                );
                return Ok(());
            }
            WorkflowCommand::Enable { workflow } => self.set_enabled(&workflow, true).await?,
            WorkflowCommand::Disable { workflow } => self.set_enabled(&workflow, false).await?,
            WorkflowCommand::Delete { workflow } => {
                let workflow_id = self.workflow_id(&workflow).await?;
                self.workflows
                    .delete_workflow(sched::DeleteWorkflowRequest {
                        workflow_id: workflow_id.clone(),
                    })
                    .await?;
                eprintln!("deleted workflow {workflow_id}");
                return Ok(());
            }
            WorkflowCommand::Why { workflow } => {
                let workflow_id = self.workflow_id(&workflow).await?;
                let diagnosis = self
                    .workflows
                    .explain_workflow(sched::ExplainWorkflowRequest { workflow_id })
                    .await?
                    .into_inner();
                render::one(output, &diagnosis);
                return Ok(());
            }
            WorkflowCommand::Trigger(trigger) => {
                let task = self.trigger(trigger).await?;
                render::one(output, &task);
                return Ok(());
            }
            WorkflowCommand::RotateSecret { workflow } => {
                let workflow_id = self.workflow_id(&workflow).await?;
                self.workflows
                    .rotate_webhook_secret(sched::RotateWebhookSecretRequest { workflow_id })
                    .await?
                    .into_inner()
            }
        };
        render::one(output, &workflow);
        Ok(())
    }

    async fn create_workflow(&mut self, create: CreateWorkflow) -> anyhow::Result<sched::Workflow> {
        use sched::trigger::Kind;
        let agent_id = self.agent_id(&create.agent).await?;
        let duration = |d: Duration| prost_types::Duration::try_from(d).ok();
        let policy = schedule_policy(&create)?;
        let kind = if let Some(period) = create.interval {
            Kind::Interval(sched::IntervalTrigger {
                period: duration(period),
                policy,
            })
        } else if let Some(expression) = create.cron.clone() {
            Kind::Cron(sched::CronTrigger { expression, policy })
        } else if policy.is_some() {
            return Err(UsageError(
                "--catch-up, --catch-up-window and --overlap are for schedules (--interval or --cron)"
                    .into(),
            )
            .into());
        } else if let Some(delay) = create.delay {
            Kind::Delay(sched::DelayTrigger {
                delay: duration(delay),
            })
        } else if let Some(parent) = &create.after {
            let on = match create.on.as_str() {
                "succeeded" => sched::ChainOn::Succeeded,
                "failed" => sched::ChainOn::Failed,
                "any" => sched::ChainOn::Any,
                other => {
                    return Err(UsageError(format!(
                        "--on {other:?}: use succeeded, failed or any"
                    ))
                    .into());
                }
            };
            Kind::Chain(sched::ChainTrigger {
                parent_workflow_id: self.workflow_id(parent).await?,
                on: on as i32,
            })
        } else if let Some(agent) = &create.on_agent_restart {
            let agent_id = match agent.as_str() {
                "" => String::new(),
                agent => self.agent_id(agent).await?,
            };
            Kind::AgentRestart(sched::AgentRestartTrigger { agent_id })
        } else if create.webhook {
            Kind::Webhook(sched::WebhookTrigger {
                events: create.events,
                actions: create.actions,
                mapping: create.mapping.into_iter().collect(),
                ..Default::default()
            })
        } else {
            Kind::Manual(sched::ManualTrigger {})
        };
        Ok(self
            .workflows
            .create_workflow(sched::CreateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    name: create.name,
                    agent_id,
                    enabled: !create.disabled,
                    trigger: Some(sched::Trigger { kind: Some(kind) }),
                    prompt_template: create.template,
                    max_concurrency: create.max_concurrency,
                    max_attempts: create.max_attempts,
                    concurrency_keys: create.keys,
                    tool_policy: Some(sched::ToolPolicy {
                        allowed_tools: create.allowed_tools,
                        denied_tools: create.denied_tools,
                        ask_tools: create.ask_tools,
                    }),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner())
    }

    async fn set_enabled(
        &mut self,
        workflow: &str,
        enabled: bool,
    ) -> anyhow::Result<sched::Workflow> {
        let id = self.workflow_id(workflow).await?;
        Ok(self
            .workflows
            .update_workflow(sched::UpdateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    id,
                    enabled,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["enabled".into()],
                }),
            })
            .await?
            .into_inner())
    }

    async fn trigger(&mut self, trigger: TriggerWorkflow) -> anyhow::Result<sched::Task> {
        let workflow_id = self.workflow_id(&trigger.workflow).await?;
        Ok(self
            .workflows
            .trigger_workflow(sched::TriggerWorkflowRequest {
                workflow_id,
                idempotency_key: trigger.key.unwrap_or_default(),
                fields: Some(sched::TaskFields {
                    title: trigger.title,
                    body: trigger.body,
                    url: trigger.url,
                    labels: trigger.labels,
                    metadata: trigger.metadata.into_iter().collect(),
                }),
                timeout: None,
                priority: trigger.priority,
            })
            .await?
            .into_inner())
    }
}

/// The schedule policy the flags ask for; None when none is given.
fn schedule_policy(create: &CreateWorkflow) -> anyhow::Result<Option<sched::SchedulePolicy>> {
    if create.catch_up.is_none() && create.catch_up_window.is_none() && create.overlap.is_none() {
        return Ok(None);
    }
    // clap checked the values against these lists.
    let catch_up = match create.catch_up.as_deref() {
        Some("none") => sched::CatchUp::None,
        Some("all") => sched::CatchUp::All,
        _ => sched::CatchUp::Latest,
    };
    let overlap = match create.overlap.as_deref() {
        Some("skip") => sched::Overlap::Skip,
        Some("buffer-one") => sched::Overlap::BufferOne,
        _ => sched::Overlap::Allow,
    };
    Ok(Some(sched::SchedulePolicy {
        catch_up: catch_up as i32,
        catch_up_window: create
            .catch_up_window
            .and_then(|window| prost_types::Duration::try_from(window).ok()),
        overlap: overlap as i32,
    }))
}
