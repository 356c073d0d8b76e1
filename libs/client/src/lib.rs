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

/// When to open a broken watch again: a service that is briefly
/// unavailable (restarting, failing over) gets five tries in a row, with
/// growing pauses (0.4 s to 6.4 s); anything else, or a sixth failure,
/// ends the watch. A watch resumes after the last item it showed, so
/// nothing is shown twice or skipped.
#[derive(Debug, Default)]
pub struct Reconnect {
    failures: u32,
}

impl Reconnect {
    /// Most failures in a row before giving up.
    const MAX_FAILURES: u32 = 5;

    /// Something arrived: the next failure is the first again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Whether to open the watch again after `status`; waits first.
    pub async fn retry(&mut self, status: &tonic::Status) -> bool {
        if self.failures >= Self::MAX_FAILURES || status.code() != tonic::Code::Unavailable {
            return false;
        }
        self.failures += 1;
        tokio::time::sleep(Duration::from_millis(200 << self.failures)).await;
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Five tries in a row while the service is unavailable, with pauses
    /// that double from 0.4 s; anything else ends the watch at once; a
    /// message in between starts the count again.
    #[tokio::test(start_paused = true)]
    async fn a_watch_is_reopened_only_while_the_service_is_briefly_unavailable() {
        let unavailable = tonic::Status::unavailable("restarting");
        let mut reconnect = Reconnect::default();
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            assert!(reconnect.retry(&unavailable).await);
        }
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(400 + 800 + 1600 + 3200 + 6400)
        );
        assert!(
            !reconnect.retry(&unavailable).await,
            "a sixth failure ends it"
        );
        reconnect.reset();
        assert!(reconnect.retry(&unavailable).await);
        let refused = tonic::Status::permission_denied("no");
        assert!(!Reconnect::default().retry(&refused).await);
    }

    #[tokio::test]
    async fn pages_are_followed_to_the_last_and_a_failure_ends_the_list() {
        let pages = |token: String| async move {
            match token.as_str() {
                "" => Ok((vec![1, 2], "a".to_owned())),
                "a" => Ok((vec![3], "b".to_owned())),
                "b" => Ok((vec![], String::new())),
                _ => Err(tonic::Status::invalid_argument("bad token")),
            }
        };
        assert_eq!(collect_pages(pages).await.ok(), Some(vec![1, 2, 3]));
        let broken = |token: String| async move {
            if token.is_empty() {
                Ok((vec![1], "x".to_owned()))
            } else {
                Err::<(Vec<i32>, String), _>(tonic::Status::unavailable("gone"))
            }
        };
        assert_eq!(
            collect_pages(broken).await.map_err(|s| s.code()),
            Err(tonic::Code::Unavailable)
        );
    }
}
