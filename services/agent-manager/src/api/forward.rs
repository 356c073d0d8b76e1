//! Calls about an agent another manager node supervises go to that node:
//! it holds the agent's session (and, for a process agent, its process and
//! logs). A forwarded call carries a marker and is always served where it
//! lands, so a call bounces at most once, even while an agent moves.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use shepherd_platform::auth::ClientMetadata;
use shepherd_proto::agentmanager::v1::agent_manager_client::AgentManagerClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Marks a call one node forwarded to another.
const FORWARDED: &str = "x-shepherd-forwarded-by";

pub(super) type PeerClient = AgentManagerClient<InterceptedService<Channel, ClientMetadata>>;

/// Clients of the other nodes, one lazily connected channel per URL.
pub(crate) struct Peers {
    auth: ClientMetadata,
    /// CA of the nodes' TLS certificates (the one agents trust).
    ca_file: Option<PathBuf>,
    /// This node's name, sent as the marker's value (for the peer's logs).
    me: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    clients: Mutex<HashMap<String, PeerClient>>,
}

impl Peers {
    pub(crate) fn new(
        token: Option<&str>,
        ca_file: Option<PathBuf>,
        me: &str,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            auth: ClientMetadata::new(token)?,
            ca_file,
            me: me
                .parse()
                .map_err(|_| anyhow::anyhow!("NODE_NAME {me:?} must be printable ASCII"))?,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// A client of the node at `url`.
    pub(crate) fn client(&self, url: &str) -> Result<PeerClient, Status> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(url) {
            return Ok(client.clone());
        }
        let endpoint = shepherd_platform::tls::endpoint(url, self.ca_file.as_deref())
            .map_err(|err| Status::internal(format!("manager node at {url}: {err}")))?;
        let client =
            AgentManagerClient::with_interceptor(endpoint.connect_lazy(), self.auth.clone());
        clients.insert(url.to_owned(), client.clone());
        Ok(client)
    }

    /// A caller's call, forwarded: with the caller's own credential (the
    /// peer checks its role again; this node's token would lend the
    /// caller this node's rights).
    pub(crate) fn forward<T>(&self, incoming: Request<T>) -> Request<T> {
        let credential = incoming.metadata().get("authorization").cloned();
        let mut request = self.outbound(incoming.into_inner());
        if let Some(credential) = credential {
            request.metadata_mut().insert("authorization", credential);
        }
        request
    }

    /// `message` as a forwarded call of this node's own (with its token).
    pub(crate) fn outbound<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(FORWARDED, self.me.clone());
        request
    }
}

/// Whether another node forwarded this call.
pub(super) fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}
