//! One client of both Shepherd services, for every front end (the CLI,
//! `shepherd mcp`, `shepherd top`, the console): a lazily connected,
//! authenticated channel per service, lookups of an agent or a workflow
//! by id or name, and whole lists across pages.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use shepherd_platform::auth::ClientMetadata;
use shepherd_proto::agentmanager::v1::{self as am, agent_manager_client::AgentManagerClient};
use shepherd_proto::scheduler::v1::{self as sched, scheduler_client::SchedulerClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A channel that sends the caller's credential with every call.
pub type Authed = InterceptedService<Channel, ClientMetadata>;

/// Where the services are and how to reach them.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub agent_manager_url: &'a str,
    pub scheduler_url: &'a str,
    /// The API token (or NAME:TOKEN), if the services require one.
    pub token: Option<&'a str>,
    /// A CA to trust for https URLs.
    pub ca_file: Option<&'a Path>,
}

/// A URL or CA file that cannot be used (a usage error, not a failure of
/// the services).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadTarget(pub String);

/// The two services' clients.
#[derive(Clone)]
pub struct Shepherd {
    pub agents: AgentManagerClient<Authed>,
    pub workflows: SchedulerClient<Authed>,
}

/// A lazily connected channel to `url` carrying `auth`: an unreachable
/// service surfaces as UNAVAILABLE on the call, not at start.
pub fn channel(
    url: &str,
    ca_file: Option<&Path>,
    auth: &ClientMetadata,
) -> Result<Authed, BadTarget> {
    let channel = shepherd_platform::tls::endpoint(url, ca_file)
        .map_err(|err| BadTarget(err.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(InterceptedService::new(channel, auth.clone()))
}

impl Shepherd {
    /// Clients of both services, with one credential.
    pub fn connect(target: Target<'_>) -> anyhow::Result<Self> {
        let auth = ClientMetadata::new(target.token)?;
        Ok(Self {
            agents: AgentManagerClient::new(channel(
                target.agent_manager_url,
                target.ca_file,
                &auth,
            )?),
            workflows: SchedulerClient::new(channel(target.scheduler_url, target.ca_file, &auth)?),
        })
    }

    /// An agent id from an id or a name.
    pub async fn agent_id(&self, agent: &str) -> Result<String, tonic::Status> {
        if uuid::Uuid::parse_str(agent).is_ok() {
            return Ok(agent.to_owned());
        }
        self.all_agents(am::AgentStatus::Unspecified, HashMap::new())
            .await?
            .into_iter()
            .find(|a| a.name == agent)
            .map(|a| a.id)
            .ok_or_else(|| tonic::Status::not_found(format!("no agent with id or name {agent:?}")))
    }

    /// Every agent with this status (Unspecified: any) and these labels.
    pub async fn all_agents(
        &self,
        status: am::AgentStatus,
        labels: HashMap<String, String>,
    ) -> Result<Vec<am::Agent>, tonic::Status> {
        let client = self.agents.clone();
        collect_pages(|page_token| {
            let mut client = client.clone();
            let request = am::ListAgentsRequest {
                page_size: 1000,
                page_token,
                status: status as i32,
                labels: labels.clone(),
            };
            async move {
                let page = client.list_agents(request).await?.into_inner();
                Ok((page.agents, page.next_page_token))
            }
        })
        .await
    }

    /// A workflow id from an id or a name.
    pub async fn workflow_id(&self, workflow: &str) -> Result<String, tonic::Status> {
        if uuid::Uuid::parse_str(workflow).is_ok() {
            return Ok(workflow.to_owned());
        }
        self.all_workflows(String::new(), None)
            .await?
            .into_iter()
            .find(|w| w.name == workflow)
            .map(|w| w.id)
            .ok_or_else(|| {
                tonic::Status::not_found(format!("no workflow with id or name {workflow:?}"))
            })
    }

    /// Every workflow (of `agent_id`, if not empty; enabled or not, if
    /// given).
    pub async fn all_workflows(
        &self,
        agent_id: String,
        enabled: Option<bool>,
    ) -> Result<Vec<sched::Workflow>, tonic::Status> {
        let client = self.workflows.clone();
        collect_pages(|page_token| {
            let mut client = client.clone();
            let request = sched::ListWorkflowsRequest {
                page_size: 1000,
                page_token,
                agent_id: agent_id.clone(),
                enabled,
            };
            async move {
                let page = client.list_workflows(request).await?.into_inner();
                Ok((page.workflows, page.next_page_token))
            }
        })
        .await
    }
}

/// Follows `next_page_token` from the first page to the last.
pub async fn collect_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, tonic::Status>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let (items, next) = fetch(page_token).await?;
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
        }
        page_token = next;
    }
}
