//! Why a call to the agent-manager failed, in the scheduler's terms: a
//! refusal (the agent cannot take it) or unavailability (retry later).

/// Why a call to the agent-manager failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ManagerError {
    /// The agent cannot take tasks now (not ready, or unknown).
    #[error("{0}")]
    Refused(String),
    /// The manager could not be reached or could not answer; retry later.
    #[error("agent-manager unreachable: {0}")]
    Unavailable(String),
}

impl ManagerError {
    /// What the manager (or the transport) said.
    pub(crate) fn message(&self) -> &str {
        match self {
            Self::Refused(message) | Self::Unavailable(message) => message,
        }
    }
}

impl From<tonic::Status> for ManagerError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::FailedPrecondition
            | tonic::Code::NotFound
            | tonic::Code::InvalidArgument => Self::Refused(status.message().to_owned()),
            _ => Self::Unavailable(status.message().to_owned()),
        }
    }
}
