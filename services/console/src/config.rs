//! shepherd-console configuration: flags, each with an environment fallback.

use std::path::PathBuf;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "shepherd-console",
    version,
    about = "Shepherd console: a live web view of agents, workflows and tasks"
)]
pub struct Config {
    /// Address to serve the console on (loopback by default: put it behind
    /// your own TLS proxy to share it).
    #[arg(long, env = "CONSOLE_LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// The agent-manager's gRPC URL.
    #[arg(
        long,
        env = "AGENT_MANAGER_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub agent_manager_url: String,

    /// The scheduler's gRPC URL.
    #[arg(long, env = "SCHEDULER_URL", default_value = "http://127.0.0.1:50052")]
    pub scheduler_url: String,

    /// The services' API token (as the CLI's). When set, the console asks
    /// each browser for it before showing anything.
    #[arg(long, env = "SHEPHERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Serve the console without a token on an address other than
    /// loopback. Off: such a console refuses to start (anyone who reached
    /// it could stop, restart and trigger everything).
    #[arg(
        long,
        env = "SHEPHERD_ALLOW_OPEN_API",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub allow_open: bool,

    /// Origins the console is reached at besides loopback
    /// (`https://console.example.com`, comma-separated): requests naming
    /// any other host are refused (DNS rebinding), so are state-changing
    /// requests from other origins. An https origin makes the session
    /// cookie `Secure`.
    #[arg(
        long = "public-origin",
        env = "CONSOLE_PUBLIC_ORIGINS",
        value_delimiter = ','
    )]
    pub public_origins: Vec<String>,

    /// PEM CA for https:// service URLs (as the CLI's).
    #[arg(long, env = "SHEPHERD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}
