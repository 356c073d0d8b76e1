//! The scheduler's client of the agent-manager: the only way it learns
//! about agents (it never reads the manager's tables).

use std::collections::HashSet;
use std::time::Duration;

use shepherd_platform::auth::ClientMetadata;
use shepherd_proto::agentmanager::v1::{self as pb, agent_manager_client::AgentManagerClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

/// Deadline of unary calls: a hung manager must not wedge a runner.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

type Client = AgentManagerClient<InterceptedService<Channel, ClientMetadata>>;

#[derive(Clone)]
pub struct ManagerClient {
    client: Client,
}

impl ManagerClient {
    /// Connects lazily: the scheduler starts (and serves its API) while the
    /// manager is still down.
    pub fn new(
        url: &str,
        token: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let channel = shepherd_platform::tls::endpoint(url, ca_file)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        let auth = ClientMetadata::new(token)?;
        Ok(Self {
            client: AgentManagerClient::with_interceptor(channel, auth),
        })
    }

    fn request<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(CALL_TIMEOUT);
        request
    }

    pub async fn dispatch(
        &self,
        agent: Uuid,
        task_id: &str,
        payload: Vec<u8>,
    ) -> Result<pb::DispatchTaskResponse, tonic::Status> {
        let request = Self::request(pb::DispatchTaskRequest {
            agent_id: agent.to_string(),
            task_id: task_id.to_owned(),
            payload,
            trace_context: Default::default(),
        });
        Ok(self
            .client
            .clone()
            .dispatch_task(request)
            .await?
            .into_inner())
    }

    /// Whether the agent exists (NOT_FOUND: false; other failures: error).
    pub async fn agent_exists(&self, agent: Uuid) -> Result<bool, tonic::Status> {
        let request = Self::request(pb::GetAgentRequest {
            agent_id: agent.to_string(),
        });
        match self.client.clone().get_agent(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(status),
        }
    }

    /// Every agent that is READY right now.
    pub async fn ready_agents(&self) -> Result<HashSet<Uuid>, tonic::Status> {
        let mut ready = HashSet::new();
        let mut page_token = String::new();
        loop {
            let request = Self::request(pb::ListAgentsRequest {
                page_size: 1000,
                page_token,
                status: pb::AgentStatus::Ready as i32,
                labels: Default::default(),
            });
            let page = self.client.clone().list_agents(request).await?.into_inner();
            ready.extend(
                page.agents
                    .iter()
                    .filter_map(|a| Uuid::parse_str(&a.id).ok()),
            );
            if page.next_page_token.is_empty() {
                return Ok(ready);
            }
            page_token = page.next_page_token;
        }
    }

    pub async fn watch(
        &self,
        after: u64,
    ) -> Result<tonic::Streaming<pb::WatchAgentEventsResponse>, tonic::Status> {
        let request = tonic::Request::new(pb::WatchAgentEventsRequest {
            after_sequence: after,
            agent_id: String::new(),
        });
        Ok(self
            .client
            .clone()
            .watch_agent_events(request)
            .await?
            .into_inner())
    }
}
