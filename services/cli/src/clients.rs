//! The two services' clients, connected once per run, and the lookups
//! every front end shares (names to ids, whole lists): the commands, `shepherd
//! mcp` and `shepherd top` all go through this facade.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use shepherd_platform::auth::ClientMetadata;
use shepherd_proto::agentmanager::v1::{self as am, agent_manager_client::AgentManagerClient};
use shepherd_proto::scheduler::v1::{self as sched, scheduler_client::SchedulerClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::{Cli, Output};

pub(crate) type Authed = InterceptedService<Channel, ClientMetadata>;

/// Bad usage found after parsing (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);

/// The two services' clients, and how results are printed.
#[derive(Clone)]
pub(crate) struct Clients {
    pub(crate) agents: AgentManagerClient<Authed>,
    pub(crate) workflows: SchedulerClient<Authed>,
    pub(crate) output: Output,
}

fn connect(url: &str, ca_file: Option<&Path>, auth: &ClientMetadata) -> anyhow::Result<Authed> {
    // Lazy: an unreachable service surfaces as UNAVAILABLE on the call,
    // which maps to its exit code.
    let channel = shepherd_platform::tls::endpoint(url, ca_file)
        .map_err(|err| UsageError(err.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(InterceptedService::new(channel, auth.clone()))
}

impl Clients {
    /// Clients of the services `cli` names, with its credential.
    pub(crate) fn connect(cli: &Cli) -> anyhow::Result<Self> {
        let auth = ClientMetadata::new(cli.token.as_deref())?;
        Ok(Self {
            agents: AgentManagerClient::new(connect(
                &cli.agent_manager_url,
                cli.ca_file.as_deref(),
                &auth,
            )?),
            workflows: SchedulerClient::new(connect(
                &cli.scheduler_url,
                cli.ca_file.as_deref(),
                &auth,
            )?),
            output: cli.output,
        })
    }

    pub(crate) fn output(&self) -> Output {
        self.output
    }

    /// An agent id from an id or a name.
    pub(crate) async fn agent_id(&self, agent: &str) -> anyhow::Result<String> {
        if uuid::Uuid::parse_str(agent).is_ok() {
            return Ok(agent.to_owned());
        }
        self.all_agents(am::AgentStatus::Unspecified, HashMap::new())
            .await?
            .into_iter()
            .find(|a| a.name == agent)
            .map(|a| a.id)
            .ok_or_else(|| {
                tonic::Status::not_found(format!("no agent with id or name {agent:?}")).into()
            })
    }

    pub(crate) async fn all_agents(
        &self,
        status: am::AgentStatus,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<Vec<am::Agent>> {
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
    pub(crate) async fn workflow_id(&self, workflow: &str) -> anyhow::Result<String> {
        if uuid::Uuid::parse_str(workflow).is_ok() {
            return Ok(workflow.to_owned());
        }
        self.all_workflows(String::new(), None)
            .await?
            .into_iter()
            .find(|w| w.name == workflow)
            .map(|w| w.id)
            .ok_or_else(|| {
                tonic::Status::not_found(format!("no workflow with id or name {workflow:?}")).into()
            })
    }

    pub(crate) async fn all_workflows(
        &self,
        agent_id: String,
        enabled: Option<bool>,
    ) -> anyhow::Result<Vec<sched::Workflow>> {
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
pub(crate) async fn collect_pages<T, F, Fut>(mut fetch: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
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
