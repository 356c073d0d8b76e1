//! The scheduler's errors: what its domain can say, typed, beside the
//! kinds every service shares (`Common`). They become gRPC statuses in one
//! place (`From<Error> for tonic::Status`), through the platform's mapping,
//! so both services word and detail their codes the same way. (The
//! agent-manager's own failures, as the scheduler sees them, are
//! `manager_client::ManagerError`.)

use shepherd_platform::error::Error as Shared;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("workflow {0} not found")]
    WorkflowNotFound(Uuid),
    /// Bad input, a task (or another thing) not found, a name taken, a
    /// state that forbids the call (a deleted agent's workflow, a workflow
    /// that is not a webhook's), the database, ...: the kinds every service
    /// shares.
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
            Error::WorkflowNotFound(_) => Shared::NotFound(err.to_string()),
            Error::Common(shared) => shared,
        };
        shared.into()
    }
}
