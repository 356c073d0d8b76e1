//! The agent-manager's errors: what its domain can say, typed, beside the
//! kinds every service shares (`Common`). They become gRPC statuses in one
//! place (`From<Error> for tonic::Status`), through the platform's mapping,
//! so every service words and details its codes the same way.

use shepherd_platform::error::Error as Shared;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("agent {0} not found")]
    AgentNotFound(Uuid),
    /// The agent has no live session: tasks wait until it is ready.
    #[error(
        "agent {agent} is not ready (status: {status}); tasks can be dispatched once its process has connected (AgentReady event)"
    )]
    AgentNotReady { agent: Uuid, status: String },
    /// A session's token or credential is not (or no longer) the agent's.
    #[error("{0}")]
    StaleSession(String),
    /// Bad input, another thing not found (an approval, a task, an agent
    /// no longer this node's), a state that forbids the call, the
    /// database, ...: the kinds every service shares.
    #[error(transparent)]
    Common(#[from] Shared),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

shepherd_platform::common_errors!(Error);

/// The one mapping to gRPC status codes: each domain failure names its
/// kind; the platform words the status.
impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let shared = match err {
            Error::AgentNotFound(_) => Shared::NotFound(err.to_string()),
            Error::AgentNotReady { .. } => Shared::FailedPrecondition(err.to_string()),
            Error::StaleSession(message) => Shared::Unauthenticated(message),
            Error::Common(shared) => shared,
        };
        shared.into()
    }
}
