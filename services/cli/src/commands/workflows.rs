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
                self.workflows
                    .get_workflow(sched::GetWorkflowRequest { workflow_id })
                    .await?
                    .into_inner()
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
        let kind = if let Some(period) = create.interval {
            Kind::Interval(sched::IntervalTrigger {
                period: duration(period),
            })
        } else if let Some(expression) = create.cron {
            Kind::Cron(sched::CronTrigger { expression })
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
