use clap::Parser;
use shepherd_agent_manager::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    shepherd_platform::telemetry::init("agent-manager");
    let shutdown = shepherd_platform::shutdown::on_signal();
    shepherd_agent_manager::run(config, shutdown).await
}
