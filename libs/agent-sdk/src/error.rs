//! What can stop an agent from running.

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error(
        "environment variable {0} is not set; agents are started by the agent-manager, which sets it"
    )]
    MissingEnv(&'static str),
    #[error("invalid manager URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The manager refused the session token: this process belongs to an
    /// earlier generation (or the token is wrong). Retrying cannot help.
    #[error("the agent-manager refused the session: {0}")]
    Refused(String),
}
