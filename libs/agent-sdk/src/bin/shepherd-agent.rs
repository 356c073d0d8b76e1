//! The reference agent. Two ways to run a task, and in neither can a task
//! field change what runs:
//!
//! * **exec mode** (`--exec PROGRAM [-- ARGS...]`): runs PROGRAM with a
//!   fixed argv, no shell. The task's prompt arrives on stdin and its fields
//!   in `SHEPHERD_TASK_*` environment variables. This is how any CLI agent
//!   (`claude -p`, `codex exec`, `aider --message-file -`) plugs in.
//! * **shell mode** (the default): runs the workflow's template rendered
//!   for the shell (`sh -c SCRIPT`), in which every placeholder is a quoted
//!   reference to its field's variable (`"$SHEPHERD_TASK_TITLE"`): a value
//!   is one word of data, never parsed as shell. The prompt is on stdin
//!   here too. A task sent without a spec (a direct `DispatchTask` with
//!   only a payload) runs its payload, which its sender wrote.
//!
//! Exit status 0 reports success; output is stdout then stderr. An empty
//! script is a no-op that succeeds at once (handy for benchmarks).

use std::process::Stdio;

use clap::Parser;
use shepherd_agent_sdk::{AgentConfig, IncomingTask, TaskHandler, TaskResult};
use tokio::io::AsyncWriteExt;

/// Output kept per task (the rest is cut).
const MAX_OUTPUT: usize = 64 * 1024;

#[derive(Parser)]
#[command(
    name = "shepherd-agent",
    version,
    about = "Shepherd reference agent: runs tasks with a program (exec mode) or a shell script"
)]
struct Args {
    /// Shell used in shell mode.
    #[arg(long, env = "SHEPHERD_AGENT_SHELL", default_value = "/bin/sh")]
    shell: String,

    /// Exec mode: run this program for every task (no shell), the prompt on
    /// stdin and the fields in SHEPHERD_TASK_* variables.
    #[arg(long)]
    exec: Option<String>,

    /// Arguments of the exec-mode program (after `--`), fixed for every
    /// task.
    #[arg(last = true)]
    exec_args: Vec<String>,
}

/// What runs a task.
enum Runner {
    Shell(String),
    Exec { program: String, args: Vec<String> },
}

struct Agent {
    runner: Runner,
}

impl TaskHandler for Agent {
    async fn handle(&self, task: IncomingTask) -> TaskResult {
        let (mut command, stdin) = match &self.runner {
            Runner::Exec { program, args } => {
                let mut command = tokio::process::Command::new(program);
                command.args(args);
                (command, prompt(&task))
            }
            Runner::Shell(shell) => {
                let script = match &task.spec {
                    Some(spec) => spec.shell_script.clone(),
                    None => String::from_utf8_lossy(&task.payload).into_owned(),
                };
                if script.trim().is_empty() {
                    return TaskResult::success("");
                }
                let mut command = tokio::process::Command::new(shell);
                command.arg("-c").arg(script);
                (command, prompt(&task))
            }
        };
        tracing::info!(task_id = %task.task_id, attempt = task.attempt, "running task");
        command
            .envs(task.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run(command, stdin).await
    }
}

/// The prompt the task's program reads on stdin.
fn prompt(task: &IncomingTask) -> Vec<u8> {
    match &task.spec {
        Some(spec) => spec.prompt.clone().into_bytes(),
        None => task.payload.clone(),
    }
}

async fn run(mut command: tokio::process::Command, stdin: Vec<u8>) -> TaskResult {
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return TaskResult::failure(format!("could not start the task: {err}")),
    };
    if let Some(mut pipe) = child.stdin.take() {
        // A program that does not read its stdin closes it early: fine.
        tokio::spawn(async move {
            let _ = pipe.write_all(&stdin).await;
        });
    }
    match child.wait_with_output().await {
        Ok(output) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            truncate(&mut text, MAX_OUTPUT);
            if output.status.success() {
                TaskResult::success(text)
            } else {
                TaskResult::failure(format!("{}\n{text}", output.status))
            }
        }
        Err(err) => TaskResult::failure(format!("waiting for the task failed: {err}")),
    }
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
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
    let runner = match args.exec {
        Some(program) => Runner::Exec {
            program,
            args: args.exec_args,
        },
        None => Runner::Shell(args.shell),
    };
    tracing::info!(agent_id = %config.agent_id, manager = %config.manager_url, "shepherd-agent starting");
    let result = shepherd_agent_sdk::run(config, Agent { runner }).await;
    telemetry.shutdown();
    Ok(result?)
}
