//! Configuration pieces both services take from flags with environment
//! fallbacks (`clap`'s `env`), flattened into each service's own `Config`.

use std::time::Duration;

/// PostgreSQL connection settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/shepherd
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// Maximum connections in the pool.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: usize,
}

/// Default largest request a service decodes (tonic's own default).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// gRPC settings both services share.
#[derive(Debug, Clone, clap::Args)]
pub struct GrpcArgs {
    /// Largest request message accepted, in bytes; a larger one is refused
    /// with RESOURCE_EXHAUSTED before it is decoded.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
}

/// Parses a human duration such as `500ms`, `10s` or `1m` (for clap).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("invalid duration {text:?} ({err}); use e.g. 500ms, 10s, 1m"))
}

/// The kernel's host name (unique per container or pod), else `fallback`:
/// the default name of a replica or node.
pub fn host_name(fallback: &str) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| fallback.to_owned())
}
