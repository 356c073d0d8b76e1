//! Where an agent connects and how it authenticates, from the environment
//! the manager gives it.

use std::time::Duration;

use crate::credential;
use crate::error::SdkError;

/// 128 random bits, hex (a process's instance id).
pub(crate) fn random_instance_id() -> String {
    let mut bytes = [0u8; 16];
    // Without randomness, the pid and start time still tell instances apart.
    if getrandom::fill(&mut bytes).is_err() {
        let seed = u128::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
        bytes = seed.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long an agent runs without hearing from its manager by default.
pub const DEFAULT_ORPHAN_TIMEOUT: Duration = Duration::from_secs(300);

/// Where to connect and how to authenticate.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub agent_id: String,
    /// The session token the manager gave this process
    /// (`SHEPHERD_SESSION_TOKEN`), or an external agent's long-lived
    /// credential (`SHEPHERD_AGENT_CREDENTIAL`).
    pub session_token: String,
    /// Random per process start: for an external agent, a new instance is a
    /// restart while the same one reconnecting is not.
    pub instance_id: String,
    pub manager_url: String,
    /// PEM CA to verify the manager's TLS certificate (https URLs).
    pub manager_ca_file: Option<std::path::PathBuf>,
    /// How long the agent keeps running without hearing from its manager
    /// before it exits with its whole process group, so that an agent never
    /// outlives its manager for good (`SHEPHERD_ORPHAN_TIMEOUT`, default
    /// 5 minutes; "0s" never).
    pub orphan_timeout: Option<Duration>,
}

impl AgentConfig {
    pub fn from_env() -> Result<Self, SdkError> {
        let var = |name: &'static str| std::env::var(name).map_err(|_| SdkError::MissingEnv(name));
        Ok(Self {
            agent_id: var("SHEPHERD_AGENT_ID")?,
            // Read once, then gone from the environment (see `credential`).
            session_token: credential::take(&[
                "SHEPHERD_SESSION_TOKEN",
                "SHEPHERD_AGENT_CREDENTIAL",
            ])
            .ok_or(SdkError::MissingEnv(
                "SHEPHERD_SESSION_TOKEN (or SHEPHERD_AGENT_CREDENTIAL)",
            ))?,
            instance_id: random_instance_id(),
            manager_url: var("SHEPHERD_MANAGER_URL")?,
            manager_ca_file: std::env::var_os("SHEPHERD_MANAGER_CA_FILE").map(Into::into),
            orphan_timeout: match std::env::var("SHEPHERD_ORPHAN_TIMEOUT") {
                Ok(text) => {
                    let timeout = humantime::parse_duration(&text).map_err(|err| {
                        SdkError::InvalidConfig(format!(
                            "SHEPHERD_ORPHAN_TIMEOUT is not a duration ({err}); use e.g. 5m"
                        ))
                    })?;
                    (!timeout.is_zero()).then_some(timeout)
                }
                Err(_) => Some(DEFAULT_ORPHAN_TIMEOUT),
            },
        })
    }
}
