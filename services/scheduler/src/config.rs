//! scheduler configuration: flags, each with an environment fallback.

use std::time::Duration;

use shepherd_platform::auth::AuthArgs;
use shepherd_platform::config::{DatabaseArgs, GrpcArgs, parse_duration};
use shepherd_platform::tls::TlsArgs;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "scheduler",
    version,
    about = "Shepherd scheduler: runs workflows and feeds their tasks to agents",
    after_help = "Credentials are read from the environment only, never from a command line:\n  SHEPHERD_API_TOKEN    an admin credential [env: SHEPHERD_API_TOKEN]\n  SHEPHERD_API_TOKENS   more, NAME:ROLE=TOKEN,... [env: SHEPHERD_API_TOKENS]\n  AGENT_MANAGER_TOKEN   the token presented to the agent-manager [env: AGENT_MANAGER_TOKEN]"
)]
pub struct Config {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    pub listen: String,

    /// Address to serve webhooks (`POST /hooks/{workflow}`) on over HTTP;
    /// unset: no webhook endpoint.
    #[arg(long, env = "WEBHOOK_LISTEN_ADDR")]
    pub webhook_listen: Option<String>,

    /// Base URL senders reach the webhook endpoint at (shown as each
    /// webhook workflow's URL). Default: from the webhook listen address.
    #[arg(long, env = "WEBHOOK_PUBLIC_URL")]
    pub webhook_public_url: Option<String>,

    /// Largest webhook body accepted (bigger: 413).
    #[arg(long, env = "WEBHOOK_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub webhook_max_body_bytes: usize,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub grpc: GrpcArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// PEM CA to verify the agent-manager's TLS certificate (for an
    /// https:// AGENT_MANAGER_URL).
    #[arg(long, env = "AGENT_MANAGER_CA_FILE")]
    pub agent_manager_ca_file: Option<std::path::PathBuf>,

    /// URL of the agent-manager.
    #[arg(
        long,
        env = "AGENT_MANAGER_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub agent_manager_url: String,

    /// Bearer token the scheduler presents to the agent-manager (a
    /// credential with the role `service`): AGENT_MANAGER_TOKEN, read from
    /// the environment only.
    #[arg(skip = shepherd_platform::auth::Secret::from_env("AGENT_MANAGER_TOKEN"))]
    pub agent_manager_token: Option<shepherd_platform::auth::Secret>,

    /// How long a runner waits for its agent to be ready before it stops
    /// with reason "agent not ready".
    #[arg(long, env = "STARTUP_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub startup_window: Duration,

    /// How often the level pass compares desired and live runners.
    #[arg(long, env = "RECONCILE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,

    /// The event stream is considered stalled (and reconnected) when no
    /// message, heartbeats included, arrives for this long.
    #[arg(long, env = "EVENT_STREAM_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub event_stream_timeout: Duration,

    /// Turns off level passes (at connect and periodic) so tests can prove
    /// that the event edge and stream resume heal runners on their own.
    /// Resync still runs one. Not for production.
    #[arg(long, env = "DISABLE_LEVEL_RECONCILE", hide = true)]
    pub disable_level_reconcile: bool,

    /// This replica's name as the owner of runner leases. Every replica
    /// sharing a database needs its own; a restarted replica with the same
    /// name takes its leases back at once. Defaults to the host name.
    #[arg(long, env = "REPLICA_ID", default_value_t = default_replica_id())]
    pub replica_id: String,

    /// Run as a hot standby: take workflows only while no active replica
    /// is alive (after a whole LEASE_TTL with their lease left free), and
    /// hand them back once one is.
    #[arg(long, env = "SCHEDULER_STANDBY")]
    pub standby: bool,

    /// How long this replica's membership, which keeps all of its runner
    /// leases, lasts unless renewed (every third of it). A dead replica's
    /// workflows are taken over after at most this long.
    #[arg(long, env = "LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// A runner whose workflow has had a task in flight for longer than
    /// this shows as STALLED ("task X in flight for N s").
    #[arg(long, env = "RUNNER_STALL_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub stall_after: Duration,

    /// The wake-up safety net: how often one query looks for claimable
    /// work that no notification announced (runners otherwise sleep until
    /// woken; see `wakeups`).
    #[arg(long, env = "RUNNER_POLL_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub runner_poll_interval: Duration,
}

/// The kernel's host name (unique per container), else "scheduler".
fn default_replica_id() -> String {
    shepherd_platform::config::host_name("scheduler")
}
