//! The connection to the agent-manager: one lazily connected channel
//! carrying the caller's credential, and the deadline every unary call has.

use std::time::Duration;

use shepherd_platform::auth::ClientMetadata;
use shepherd_proto::agentmanager::v1::agent_manager_client::AgentManagerClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Deadline of unary calls: a hung manager must not wedge a runner.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) type Client = AgentManagerClient<InterceptedService<Channel, ClientMetadata>>;

/// Connects lazily: the scheduler starts (and serves its API) while the
/// manager is still down.
pub(super) fn connect(
    url: &str,
    token: Option<&str>,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<Client> {
    let channel = shepherd_platform::tls::endpoint(url, ca_file)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy();
    let auth = ClientMetadata::new(token)?;
    Ok(AgentManagerClient::with_interceptor(channel, auth))
}

/// A unary call's request, with its deadline.
pub(super) fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}
