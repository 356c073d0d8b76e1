//! gRPC handlers: translation between the wire and the scheduler, nothing
//! more.

pub(crate) mod convert;
mod roles;
pub(crate) mod webhooks;

pub(crate) use roles::permission;

use std::sync::Arc;

use futures_util::StreamExt;

use shepherd_platform::paging::{self, page_size};
use shepherd_proto::scheduler::v1::{self as pb, scheduler_server};
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::model::{parse_id, validate_key};
use crate::service::Scheduler;
use crate::store::{TaskCursor, TaskEventFilter, WorkflowFilter};

type ResponseStream<T> =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;
use shepherd_platform::server::record_id;

pub(crate) use shepherd_proto::scheduler::v1::scheduler_server::SchedulerServer;

#[derive(Clone)]
pub(crate) struct Api {
    scheduler: Arc<Scheduler>,
    /// Base URL of the webhook endpoint, when served.
    webhooks: Option<String>,
    audit: shepherd_platform::audit::AuditLog,
}

impl Api {
    pub(crate) fn new(
        scheduler: Arc<Scheduler>,
        webhooks: Option<String>,
        audit: shepherd_platform::audit::AuditLog,
    ) -> Self {
        Self {
            scheduler,
            webhooks,
            audit,
        }
    }

    /// A workflow on the wire, with its webhook URL (and its secret, for
    /// the one response that shows it).
    fn workflow(&self, workflow: crate::model::Workflow, secret: Option<String>) -> pb::Workflow {
        let mut wire = convert::workflow(workflow);
        if let Some(pb::trigger::Kind::Webhook(webhook)) =
            wire.trigger.as_mut().and_then(|t| t.kind.as_mut())
        {
            if let Some(base) = &self.webhooks {
                webhook.url = format!("{base}/hooks/{}", wire.id);
            }
            webhook.secret = secret.unwrap_or_default();
        }
        wire
    }
}

#[tonic::async_trait]
impl scheduler_server::Scheduler for Api {
    async fn list_audit_events(
        &self,
        request: Request<shepherd_proto::audit::v1::ListAuditEventsRequest>,
    ) -> Result<Response<shepherd_proto::audit::v1::ListAuditEventsResponse>, Status> {
        shepherd_platform::audit::list_events_rpc(&self.audit, request).await
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::Workflow>, Status> {
        let id = parse_id("workflow_id", &request.into_inner().workflow_id, "workflow")?;
        record_id("workflow_id", &id);
        let (workflow, secret) = self.scheduler.rotate_webhook_secret(id).await?;
        Ok(Response::new(self.workflow(workflow, Some(secret))))
    }

    async fn pause_workflow(
        &self,
        request: Request<pb::PauseWorkflowRequest>,
    ) -> Result<Response<pb::Workflow>, Status> {
        let by = shepherd_platform::auth::caller(&request);
        let request = request.into_inner();
        let id = parse_id("workflow_id", &request.workflow_id, "workflow")?;
        record_id("workflow_id", &id);
        let (reason, mode) = convert::pause_from(request.reason, request.while_paused)?;
        let workflow = self
            .scheduler
            .pause_workflow(id, &by, &reason, mode)
            .await?;
        Ok(Response::new(self.workflow(workflow, None)))
    }

    async fn resume_workflow(
        &self,
        request: Request<pb::ResumeWorkflowRequest>,
    ) -> Result<Response<pb::Workflow>, Status> {
        let id = parse_id("workflow_id", &request.into_inner().workflow_id, "workflow")?;
        record_id("workflow_id", &id);
        let workflow = self.scheduler.resume_workflow(id).await?;
        Ok(Response::new(self.workflow(workflow, None)))
    }

    async fn backfill_workflow(
        &self,
        request: Request<pb::BackfillWorkflowRequest>,
    ) -> Result<Response<pb::BackfillWorkflowResponse>, Status> {
        let request = request.into_inner();
        let id = parse_id("workflow_id", &request.workflow_id, "workflow")?;
        record_id("workflow_id", &id);
        let (from, to) = convert::backfill_range(request.from, request.to)?;
        let done = self.scheduler.backfill(id, from, to).await?;
        Ok(Response::new(pb::BackfillWorkflowResponse {
            ticks: u32::try_from(done.ticks).unwrap_or(u32::MAX),
            created: u32::try_from(done.created).unwrap_or(u32::MAX),
        }))
    }

    async fn pause_agent(
        &self,
        request: Request<pb::PauseAgentRequest>,
    ) -> Result<Response<pb::AgentPause>, Status> {
        let by = shepherd_platform::auth::caller(&request);
        let request = request.into_inner();
        let agent = parse_id("agent_id", &request.agent_id, "agent")?;
        record_id("agent_id", &agent);
        let reason = convert::pause_reason(request.reason)?;
        let pause = self.scheduler.pause_agent(agent, &by, &reason).await?;
        Ok(Response::new(convert::agent_pause_to(pause)))
    }

    async fn resume_agent(
        &self,
        request: Request<pb::ResumeAgentRequest>,
    ) -> Result<Response<()>, Status> {
        let agent = parse_id("agent_id", &request.into_inner().agent_id, "agent")?;
        record_id("agent_id", &agent);
        self.scheduler.resume_agent(agent).await?;
        Ok(Response::new(()))
    }

    async fn list_agent_pauses(
        &self,
        _request: Request<pb::ListAgentPausesRequest>,
    ) -> Result<Response<pb::ListAgentPausesResponse>, Status> {
        let pauses = self.scheduler.agent_pauses().await?;
        Ok(Response::new(pb::ListAgentPausesResponse {
            pauses: pauses.into_iter().map(convert::agent_pause_to).collect(),
        }))
    }

    async fn put_budget(
        &self,
        request: Request<pb::PutBudgetRequest>,
    ) -> Result<Response<pb::Budget>, Status> {
        let budget = convert::budget_from(request.into_inner().budget)?;
        record_id("subject", &budget.subject);
        let view = self.scheduler.put_budget(&budget).await?;
        Ok(Response::new(convert::budget_to(
            view,
            std::time::SystemTime::now(),
        )))
    }

    async fn list_budgets(
        &self,
        _request: Request<pb::ListBudgetsRequest>,
    ) -> Result<Response<pb::ListBudgetsResponse>, Status> {
        let now = std::time::SystemTime::now();
        let views = self.scheduler.budgets().await?;
        Ok(Response::new(pb::ListBudgetsResponse {
            budgets: views
                .into_iter()
                .map(|view| convert::budget_to(view, now))
                .collect(),
        }))
    }

    async fn delete_budget(
        &self,
        request: Request<pb::DeleteBudgetRequest>,
    ) -> Result<Response<()>, Status> {
        let request = request.into_inner();
        let (scope, subject) = convert::subject(&request.workflow_id, &request.agent_id)?;
        record_id("subject", &subject);
        self.scheduler.delete_budget(scope, subject).await?;
        Ok(Response::new(()))
    }

    async fn put_concurrency_key(
        &self,
        request: Request<pb::PutConcurrencyKeyRequest>,
    ) -> Result<Response<pb::ConcurrencyKey>, Status> {
        let key = convert::key_from(request.into_inner().key)?;
        record_id("key", &key.name);
        let usage = self.scheduler.put_key(&key).await?;
        Ok(Response::new(convert::key_to(usage)))
    }

    async fn list_concurrency_keys(
        &self,
        _request: Request<pb::ListConcurrencyKeysRequest>,
    ) -> Result<Response<pb::ListConcurrencyKeysResponse>, Status> {
        let keys = self.scheduler.list_keys().await?;
        Ok(Response::new(pb::ListConcurrencyKeysResponse {
            keys: keys.into_iter().map(convert::key_to).collect(),
        }))
    }

    async fn delete_concurrency_key(
        &self,
        request: Request<pb::DeleteConcurrencyKeyRequest>,
    ) -> Result<Response<()>, Status> {
        let name = request.into_inner().name;
        crate::model::check_key_name(&name, "name")?;
        record_id("key", &name);
        self.scheduler.delete_key(&name).await?;
        Ok(Response::new(()))
    }

    async fn create_workflow(
        &self,
        request: Request<pb::CreateWorkflowRequest>,
    ) -> Result<Response<pb::Workflow>, Status> {
        let new = convert::new_workflow(request.into_inner().workflow)?;
        let (workflow, secret) = self.scheduler.create_workflow(new).await?;
        record_id("workflow_id", &workflow.id);
        Ok(Response::new(self.workflow(workflow, secret)))
    }

    async fn get_workflow(
        &self,
        request: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::Workflow>, Status> {
        let id = parse_id("workflow_id", &request.into_inner().workflow_id, "workflow")?;
        record_id("workflow_id", &id);
        Ok(Response::new(
            self.workflow(self.scheduler.get_workflow(id).await?, None),
        ))
    }

    async fn list_workflows(
        &self,
        request: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        let request = request.into_inner();
        let limit = page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let agent_id = match request.agent_id.as_str() {
            "" => None,
            id => Some(parse_id("agent_id", id, "agent")?),
        };
        let after = paging::after::<uuid::Uuid>(&request.page_token, "ListWorkflows")?;
        let filter = WorkflowFilter {
            agent_id,
            enabled: request.enabled,
            after,
        };
        let workflows = self.scheduler.list_workflows(&filter, limit).await?;
        let next_page_token = paging::next_token(&workflows, limit, |workflow| workflow.id);
        Ok(Response::new(pb::ListWorkflowsResponse {
            workflows: workflows
                .into_iter()
                .map(|workflow| self.workflow(workflow, None))
                .collect(),
            next_page_token,
        }))
    }

    async fn update_workflow(
        &self,
        request: Request<pb::UpdateWorkflowRequest>,
    ) -> Result<Response<pb::Workflow>, Status> {
        let (patch, mask) = convert::update(request.into_inner())?;
        record_id("workflow_id", &patch.id);
        let workflow = self.scheduler.update_workflow(patch, mask).await?;
        Ok(Response::new(self.workflow(workflow, None)))
    }

    async fn delete_workflow(
        &self,
        request: Request<pb::DeleteWorkflowRequest>,
    ) -> Result<Response<()>, Status> {
        let id = parse_id("workflow_id", &request.into_inner().workflow_id, "workflow")?;
        record_id("workflow_id", &id);
        self.scheduler.delete_workflow(id).await?;
        Ok(Response::new(()))
    }

    async fn trigger_workflow(
        &self,
        request: Request<pb::TriggerWorkflowRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let request = request.into_inner();
        let id = parse_id("workflow_id", &request.workflow_id, "workflow")?;
        record_id("workflow_id", &id);
        let key = match request.idempotency_key.as_str() {
            "" => None,
            key => {
                validate_key(key)?;
                Some(request.idempotency_key)
            }
        };
        let timeout = convert::trigger_timeout(request.timeout)?;
        let task = self
            .scheduler
            .trigger(
                id,
                key,
                convert::fields(request.fields)?,
                timeout,
                convert::priority(request.priority)?,
            )
            .await?;
        Ok(Response::new(convert::task(task)))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let task_id = request.into_inner().task_id;
        validate_task_id(&task_id)?;
        record_id("task_id", &task_id);
        record_id("task_id", &task_id);
        let task = self.scheduler.cancel_task(&task_id).await?;
        Ok(Response::new(convert::task(task)))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let id = request.into_inner().task_id;
        validate_task_id(&id)?;
        Ok(Response::new(convert::task(
            self.scheduler.get_task(&id).await?,
        )))
    }

    type WatchTasksStream = ResponseStream<pb::WatchTasksResponse>;

    async fn watch_tasks(
        &self,
        request: Request<pb::WatchTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        let request = request.into_inner();
        let after: TaskCursor = request.after_cursor.parse()?;
        let workflow = match request.workflow_id.as_str() {
            "" => None,
            id => Some(parse_id("workflow_id", id, "workflow")?),
        };
        let task = match request.task_id.as_str() {
            "" => None,
            id => {
                validate_task_id(id)?;
                Some(id.to_owned())
            }
        };
        let items = self
            .scheduler
            .watch_tasks(after, TaskEventFilter { workflow, task });
        let stream = tokio_stream::wrappers::ReceiverStream::new(items)
            .map(|item| item.map(convert::watch_item).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let request = request.into_inner();
        let workflow = parse_id("workflow_id", &request.workflow_id, "workflow")?;
        record_id("workflow_id", &workflow);
        let state = convert::task_state_filter(request.state)?;
        let limit = page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let after = paging::after::<i64>(&request.page_token, "ListTasks")?;
        let tasks = self
            .scheduler
            .list_tasks(workflow, state, request.dead_letter, after, limit)
            .await?;
        let next_page_token = paging::next_token(&tasks, limit, |(seq, _)| *seq);
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks
                .into_iter()
                .map(|(_, task)| convert::task(task))
                .collect(),
            next_page_token,
        }))
    }

    async fn list_runners(
        &self,
        request: Request<pb::ListRunnersRequest>,
    ) -> Result<Response<pb::ListRunnersResponse>, Status> {
        let request = request.into_inner();
        let agent_id = match request.agent_id.as_str() {
            "" => None,
            id => Some(parse_id("agent_id", id, "agent")?),
        };
        let runners = self
            .scheduler
            .runners(agent_id)
            .await?
            .into_iter()
            .map(|(workflow, info)| convert::runner(&workflow, info))
            .collect();
        Ok(Response::new(pb::ListRunnersResponse { runners }))
    }

    async fn explain_workflow(
        &self,
        request: Request<pb::ExplainWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowDiagnosis>, Status> {
        let id = parse_id("workflow_id", &request.into_inner().workflow_id, "workflow")?;
        record_id("workflow_id", &id);
        let diagnosis = self.scheduler.explain(id).await?;
        Ok(Response::new(convert::diagnosis(diagnosis)))
    }
}

/// A task id ("<workflow_id>:<key>"): bounded and NUL-free before any
/// query, so that a lookup of a huge id costs nothing and its error stays
/// short.
fn validate_task_id(id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::invalid("task_id", "is required"));
    }
    Ok(shepherd_platform::validate::text(
        "task_id",
        id,
        MAX_TASK_ID,
    )?)
}

/// Page size of ListWorkflows and ListTasks: default and most.
pub(crate) const DEFAULT_PAGE: i64 = 100;
pub(crate) const MAX_PAGE: i64 = 1000;
/// Longest task id: a workflow id, ':', an idempotency key.
pub(crate) const MAX_TASK_ID: usize = 36 + 1 + crate::model::MAX_KEY;
