use clap::Parser;
use shepherd_console::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = shepherd_platform::telemetry::init("shepherd-console");
    let shutdown = shepherd_platform::shutdown::on_signal();
    let result = shepherd_console::run(config, shutdown).await;
    telemetry.shutdown();
    result
}
