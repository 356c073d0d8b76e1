//! The agent-manager's errors: what its domain can say, typed. They become
//! gRPC statuses in one place (`From<Error> for tonic::Status`), through
//! the platform's mapping, so every service words and details its codes
//! the same way.

use shepherd_platform::db::DbError;
use shepherd_platform::error::Error as Shared;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("agent {0} not found")]
    AgentNotFound(Uuid),
    /// Another thing (an approval, a task) is not found, or an agent is not
    /// this node's any more.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The agent has no live session: tasks wait until it is ready.
    #[error(
        "agent {agent} is not ready (status: {status}); tasks can be dispatched once its process has connected (AgentReady event)"
    )]
    AgentNotReady { agent: Uuid, status: String },
    /// A session's token or credential is not (or no longer) the agent's.
    #[error("{0}")]
    StaleSession(String),
    /// The request cannot be served in the agent's state (stopped, a limit
    /// this manager cannot enforce...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller is known, but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Errors of the shared plumbing (validation, paging, the database).
impl From<Shared> for Error {
    fn from(err: Shared) -> Self {
        match err {
            Shared::InvalidArgument { field, reason } => Self::InvalidArgument { field, reason },
            Shared::NotFound(message) => Self::NotFound(message),
            Shared::AlreadyExists(message) => Self::AlreadyExists(message),
            Shared::FailedPrecondition(message) => Self::FailedPrecondition(message),
            Shared::Unauthenticated(message) => Self::StaleSession(message),
            Shared::PermissionDenied(message) => Self::PermissionDenied(message),
            Shared::Unavailable(message) => Self::Unavailable(message),
            Shared::Db(db) => Self::Db(db),
            Shared::Internal(message) => Self::Internal(message),
        }
    }
}

shepherd_platform::from_shared_errors!(Error);

/// The one mapping to gRPC status codes.
impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let shared = match err {
            Error::InvalidArgument { field, reason } => Shared::InvalidArgument { field, reason },
            Error::AgentNotFound(_) | Error::NotFound(_) => Shared::NotFound(err.to_string()),
            Error::AlreadyExists(message) => Shared::AlreadyExists(message),
            Error::AgentNotReady { .. } => Shared::FailedPrecondition(err.to_string()),
            Error::FailedPrecondition(message) => Shared::FailedPrecondition(message),
            Error::StaleSession(message) => Shared::Unauthenticated(message),
            Error::PermissionDenied(message) => Shared::PermissionDenied(message),
            Error::Unavailable(message) => Shared::Unavailable(message),
            Error::Db(db) => Shared::Db(db),
            Error::Internal(message) => Shared::Internal(message),
        };
        shared.into()
    }
}
