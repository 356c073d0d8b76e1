//! agent-manager configuration: flags, each with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use shepherd_platform::auth::AuthArgs;

use crate::containment::{ModeChoice, ResourceLimits};
use shepherd_platform::config::{DatabaseArgs, GrpcArgs, parse_duration};
use shepherd_platform::tls::TlsArgs;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "agent-manager",
    version,
    about = "Shepherd agent-manager: supervises agent processes and serves their event log",
    after_help = "Credentials are read from the environment only, never from a command line:\n  SHEPHERD_API_TOKEN    an admin credential [env: SHEPHERD_API_TOKEN]\n  SHEPHERD_API_TOKENS   more, NAME:ROLE=TOKEN,... [env: SHEPHERD_API_TOKENS]"
)]
pub struct Config {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen: String,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub grpc: GrpcArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Run agent processes as this user (name or uid; its primary group).
    /// Needs the manager to run as root. Unset: agents run as the
    /// manager's user, and when that is root, with no capabilities.
    #[arg(long, env = "SHEPHERD_AGENT_USER")]
    pub agent_user: Option<String>,

    /// PEM CA agents use to verify this manager's TLS certificate (given to
    /// them as SHEPHERD_MANAGER_CA_FILE).
    #[arg(long, env = "AGENT_CA_FILE")]
    pub agent_ca_file: Option<PathBuf>,

    /// URL agent processes use to reach this manager (given to them as
    /// SHEPHERD_MANAGER_URL). Default: derived from the listen address.
    #[arg(long, env = "ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// Directory for agents' stdout/stderr logs. Default: <tmp>/shepherd-agent-logs.
    #[arg(long, env = "AGENT_LOG_DIR")]
    pub log_dir: Option<PathBuf>,

    /// Bytes of log kept per agent and stream.
    #[arg(long, env = "AGENT_LOG_MAX_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub log_max_bytes: u64,

    /// Time between SIGTERM and SIGKILL when stopping an agent.
    #[arg(long, env = "STOP_GRACE_PERIOD", default_value = "10s", value_parser = parse_duration)]
    pub stop_grace: Duration,

    /// Heartbeat interval of agent sessions; three missed heartbeats end a
    /// session.
    #[arg(long, env = "SESSION_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub session_heartbeat: Duration,

    /// How long an agent has to report a task after being told to stop it
    /// (timeout or CancelTask) before it counts as wedged and is restarted.
    #[arg(long, env = "CANCEL_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub cancel_grace: Duration,

    /// How long an agent's approval request waits for a decision before it
    /// expires (a denial).
    #[arg(long, env = "APPROVAL_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub approval_timeout: Duration,

    /// Live restore: agent processes keep running when the manager stops
    /// (SIGTERM or a crash) and the next manager adopts them, with their
    /// in-flight tasks. `false`: the manager stops its agents when it shuts
    /// down and kills any it finds left at start-up.
    #[arg(long, env = "LIVE_RESTORE", default_value_t = true, action = clap::ArgAction::Set)]
    pub live_restore: bool,

    /// How long an agent process whose session dropped (or that a restarted
    /// manager adopted) has to reconnect before its tasks count as lost.
    #[arg(long, env = "RECONNECT_GRACE", default_value = "15s", value_parser = parse_duration)]
    pub reconnect_grace: Duration,

    /// How long an idle WatchAgentEvents stream waits before sending a
    /// heartbeat.
    #[arg(long, env = "EVENT_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub event_heartbeat: Duration,

    /// How agents' process trees are contained: `auto` (cgroup v2 where it
    /// is the system's hierarchy, else writable cgroup v1 controllers, else
    /// the subreaper fallback), `cgroup-v2`, `cgroup-v1` or `subreaper`.
    #[arg(long, env = "CONTAINMENT", value_enum, default_value = "auto")]
    pub containment: ModeChoice,

    /// Directory, under the manager's own cgroup, that holds one cgroup per
    /// agent.
    #[arg(long, env = "CGROUP_PARENT", default_value = "shepherd")]
    pub cgroup_parent: String,

    /// Memory limit (bytes) of agents whose spec sets none; unset: none.
    #[arg(long, env = "AGENT_DEFAULT_MEMORY_BYTES")]
    pub default_memory_bytes: Option<u64>,

    /// CPU limit (cores, fractional) of agents whose spec sets none.
    #[arg(long, env = "AGENT_DEFAULT_CPU_CORES")]
    pub default_cpu_cores: Option<f64>,

    /// Process limit of agents whose spec sets none.
    #[arg(long, env = "AGENT_DEFAULT_MAX_PROCESSES")]
    pub default_max_processes: Option<u32>,

    /// Kubernetes runtime (experimental): the API server agents' Pods are
    /// created through, e.g. http://127.0.0.1:8001 (`kubectl proxy`), or
    /// `in-cluster` for the Pod's own service account (or the local
    /// kubeconfig). Unset: KUBERNETES agents are refused.
    #[arg(long, env = "KUBERNETES_API_URL")]
    pub kubernetes_api_url: Option<String>,

    /// Namespace of the agents' Pods.
    #[arg(long, env = "KUBERNETES_NAMESPACE", default_value = "default")]
    pub kubernetes_namespace: String,

    /// How often a running agent Pod's phase is read.
    #[arg(long, env = "KUBERNETES_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub kubernetes_poll_interval: Duration,

    /// This manager's node name, unique among the managers sharing the
    /// database and stable across its restarts (a restart under the same
    /// name takes its agents back). Default: the host name.
    #[arg(long, env = "NODE_NAME", default_value_t = shepherd_platform::config::host_name("agent-manager"))]
    pub node_name: String,

    /// How long this node's lease lasts unrenewed (renewed every third of
    /// it). When it expires, peers declare its agents LOST.
    #[arg(long, env = "NODE_LEASE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub node_lease_ttl: Duration,

    /// Events older than this are pruned (watchers behind them get
    /// ResyncRequired).
    #[arg(long, env = "EVENT_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub event_retention: Duration,
}

impl Config {
    /// The manager-wide default limits, validated like an agent's.
    pub fn default_limits(&self) -> Result<ResourceLimits, crate::error::Error> {
        ResourceLimits::validated(
            self.default_memory_bytes,
            self.default_cpu_cores,
            self.default_max_processes,
        )
    }

    pub fn log_dir(&self) -> PathBuf {
        self.log_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("shepherd-agent-logs"))
    }

    /// The URL agents are told to connect to.
    pub fn advertise_url(&self, bound: SocketAddr) -> String {
        if let Some(url) = &self.advertise_url {
            return url.clone();
        }
        let host = if bound.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            bound.ip().to_string()
        };
        let scheme = if self.tls.enabled() { "https" } else { "http" };
        format!("{scheme}://{host}:{}", bound.port())
    }
}
