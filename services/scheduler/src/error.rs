//! The scheduler's errors: what its domain can say, typed. They become
//! gRPC statuses in one place (`From<Error> for tonic::Status`), through
//! the platform's mapping, so both services word and detail their codes
//! the same way. (The agent-manager's own failures, as the scheduler sees
//! them, are `manager_client::ManagerError`.)

use shepherd_platform::db::DbError;
use shepherd_platform::error::Error as Shared;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("workflow {0} not found")]
    WorkflowNotFound(Uuid),
    /// A task (or another thing) is not found.
    #[error("{0}")]
    NotFound(String),
    /// A conflict with what exists (a name taken).
    #[error("{0}")]
    AlreadyExists(String),
    /// Not possible in the current state (a deleted agent's workflow, a
    /// workflow that is not a webhook's...).
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
            Shared::FailedPrecondition(message) | Shared::Unauthenticated(message) => {
                Self::FailedPrecondition(message)
            }
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
            Error::WorkflowNotFound(_) | Error::NotFound(_) => Shared::NotFound(err.to_string()),
            Error::AlreadyExists(message) => Shared::AlreadyExists(message),
            Error::FailedPrecondition(message) => Shared::FailedPrecondition(message),
            Error::PermissionDenied(message) => Shared::PermissionDenied(message),
            Error::Unavailable(message) => Shared::Unavailable(message),
            Error::Db(db) => Shared::Db(db),
            Error::Internal(message) => Shared::Internal(message),
        };
        shared.into()
    }
}
