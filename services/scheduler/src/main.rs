use clap::Parser;
use shepherd_scheduler::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // First: nothing of this process (its environment holds the database
    // URL and API tokens) is readable by the agents' processes.
    shepherd_platform::hardening::forbid_inspection()?;
    let config = Config::parse();
    let telemetry = shepherd_platform::telemetry::init("scheduler");
    let shutdown = shepherd_platform::shutdown::on_signal();
    let result = shepherd_scheduler::run(config, shutdown).await;
    telemetry.shutdown();
    result
}
