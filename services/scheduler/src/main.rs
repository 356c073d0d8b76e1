use clap::Parser;
use shepherd_scheduler::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    shepherd_platform::telemetry::init("scheduler");
    let shutdown = shepherd_platform::shutdown::on_signal();
    shepherd_scheduler::run(config, shutdown).await
}
