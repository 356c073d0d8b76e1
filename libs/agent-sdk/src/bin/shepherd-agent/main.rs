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
//! Exit status 0 reports success; output is stdout then stderr. In shell
//! mode a task whose template renders empty (or an empty payload) is a
//! no-op that succeeds at once (handy for benchmarks).
//!
//! While a task runs, its stdout streams to watchers (`WatchTasks`) as
//! output chunks, and a line `::progress FRACTION MESSAGE` (FRACTION from 0
//! to 1, or `-` when unknown) reports progress instead.
//!
//! A task's programs ask for approval with `shepherd-agent approve` (see
//! `approve.rs`): the agent exports its approval socket and a token naming
//! the task to them, and puts its own directory first on their PATH.

mod approve;

use std::process::Stdio;

use clap::Parser;
use shepherd_agent_sdk::{AgentConfig, IncomingTask, TaskHandler, TaskResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    /// Variables of the agent's environment its tasks' processes get
    /// besides the base ones (PATH, HOME, USER, LOGNAME, LANG, LANGUAGE,
    /// LC_ALL, LC_CTYPE, TZ, TMPDIR, TERM, SHEPHERD_AGENT_ID,
    /// SHEPHERD_GENERATION) and their
    /// task's own: nothing else of the agent's environment reaches a task.
    #[arg(long, env = "SHEPHERD_AGENT_PASS_ENV", value_delimiter = ',')]
    pass_env: Vec<String>,

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
    /// Where the task's programs ask for approvals.
    approvals: shepherd_agent_sdk::approval_socket::ApprovalSocket,
    /// PATH for tasks: this program's directory first, so that
    /// `shepherd-agent approve` is found.
    task_path: Option<std::ffi::OsString>,
    /// What a task's process gets of the agent's environment (read once,
    /// after the agent's credential was taken out of it).
    task_base_env: Vec<(String, std::ffi::OsString)>,
}

/// What every task's process gets of the agent's environment: where
/// programs are and how text is shown, never a credential. The agent's id
/// and generation too: they mark every process of the agent's tree (the
/// manager's subreaper containment finds the tree by them), and are no
/// secret.
const TASK_BASE_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "TERM",
    "SHEPHERD_AGENT_ID",
    "SHEPHERD_GENERATION",
];

/// The variables of `names` set in this process's environment.
fn task_base_env(pass: &[String]) -> Vec<(String, std::ffi::OsString)> {
    TASK_BASE_ENV
        .iter()
        .map(|name| (*name).to_owned())
        .chain(pass.iter().map(|name| name.trim().to_owned()))
        .filter_map(|name| std::env::var_os(&name).map(|value| (name, value)))
        .collect()
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
                // Nothing to do: the template rendered empty (e.g. the
                // default "{{body}}" with no body), or an empty payload.
                if prompt(&task).iter().all(u8::is_ascii_whitespace) {
                    return TaskResult::success("");
                }
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
        // The task stays in the agent's process group, so that whatever
        // stops the agent's group stops its tasks too; a cancel kills the
        // task's own process tree.
        // The registration ends with the task: a program it left behind
        // can ask for nothing.
        let registration = self.approvals.register(task.approver.clone());
        // Nothing of the agent's environment but what is named: a task is
        // as untrusted as the agent, and must not find its credentials.
        command
            .env_clear()
            .envs(self.task_base_env.iter().map(|(name, value)| (name, value)))
            .envs(task.env())
            .envs(registration.env());
        if let Some(path) = &self.task_path {
            command.env("PATH", path);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run(command, stdin, &task).await
    }
}

/// Once a budget of the task is spent, waits out its grace.
async fn spent_past_grace(budget: &shepherd_agent_sdk::Budget) -> shepherd_agent_sdk::BudgetSpent {
    let spent = budget.spent().await;
    tracing::warn!(summary = %spent.summary, grace = ?spent.grace, "a budget of the task is spent; ending it after the grace");
    tokio::time::sleep(spent.grace).await;
    spent
}

/// The prompt the task's program reads on stdin.
fn prompt(task: &IncomingTask) -> Vec<u8> {
    match &task.spec {
        Some(spec) => spec.prompt.clone().into_bytes(),
        None => task.payload.clone(),
    }
}

async fn run(
    mut command: tokio::process::Command,
    stdin: Vec<u8>,
    task: &IncomingTask,
) -> TaskResult {
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return TaskResult::failure(format!("could not start the task: {err}")),
    };
    let root = child.id().and_then(|pid| i32::try_from(pid).ok());
    if let Some(mut pipe) = child.stdin.take() {
        // A program that does not read its stdin closes it early: fine.
        tokio::spawn(async move {
            let _ = pipe.write_all(&stdin).await;
        });
    }
    let stdout = child.stdout.take().map(|out| {
        let progress = task.progress.clone();
        tokio::spawn(stream_stdout(out, progress))
    });
    let stderr = child
        .stderr
        .take()
        .map(|err| tokio::spawn(read_bounded(err, MAX_OUTPUT)));
    let status = tokio::select! {
        status = child.wait() => status,
        _ = task.cancel.cancelled() => {
            // Stop the task's whole process tree: nothing it started keeps
            // running after it was cancelled.
            if let Some(root) = root {
                kill_tree(root);
            }
            return TaskResult::failure("cancelled: the task's processes were killed");
        }        spent = spent_past_grace(&task.budget) => {
            // A budget it runs under is spent and the grace is over.
            if let Some(root) = root {
                kill_tree(root);
            }
            return TaskResult::failure(format!(
                "budget spent ({}): the task's processes were killed after a grace of {}",
                spent.summary,
                humantime::format_duration(spent.grace)
            ));
        }
    };
    let mut text = match stdout {
        Some(reader) => reader.await.unwrap_or_default(),
        None => String::new(),
    };
    if let Some(reader) = stderr {
        text.push_str(&String::from_utf8_lossy(&reader.await.unwrap_or_default()));
    }
    truncate(&mut text, MAX_OUTPUT);
    match status {
        Ok(status) if status.success() => TaskResult::success(text),
        Ok(status) => TaskResult::failure(format!("{status}\n{text}")),
        Err(err) => TaskResult::failure(format!("waiting for the task failed: {err}")),
    }
}

/// Longest piece of output read at once: a line longer than this (or
/// output with no newline at all) is passed on in pieces, so no output,
/// however large, is ever held whole in memory.
const MAX_PIECE: usize = 16 * 1024;
/// How long output may wait to be sent with more (many short lines go as
/// one chunk, not one message each).
const OUTPUT_LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// Passes the task's stdout on as it comes (progress lines as progress,
/// the rest as output chunks of up to `MAX_PIECE` bytes, gathered for up to
/// `OUTPUT_LINGER`) and returns the first `MAX_OUTPUT` bytes of it but the
/// progress lines. Output that is not UTF-8 is passed on lossily; reading
/// never stops before the end (a full pipe would block the task).
async fn stream_stdout(
    stdout: tokio::process::ChildStdout,
    progress: shepherd_agent_sdk::Progress,
) -> String {
    let mut reader = tokio::io::BufReader::with_capacity(MAX_PIECE, stdout);
    let mut text = String::new();
    let mut piece = Vec::new();
    let mut pending = String::new();
    let mut linger: Option<tokio::time::Instant> = None;
    loop {
        let more = tokio::select! {
            more = next_piece(&mut reader, &mut piece) => more,
            _ = async {
                match linger {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                progress.output(std::mem::take(&mut pending)).await;
                linger = None;
                continue;
            }
        };
        if !piece.is_empty() {
            let chunk = String::from_utf8_lossy(&piece).into_owned();
            piece.clear();
            if let Some(usage) = chunk.trim_end_matches('\n').strip_prefix("::usage ") {
                // "::usage INPUT_TOKENS OUTPUT_TOKENS COST": added to the
                // task's usage (a malformed line is passed on as output).
                match parse_usage(usage) {
                    Some((input, output, cost)) => progress.report_usage(input, output, cost).await,
                    None => {
                        pending.push_str(&chunk);
                        linger.get_or_insert_with(|| tokio::time::Instant::now() + OUTPUT_LINGER);
                    }
                }
            } else if let Some(report) = chunk.trim_end_matches('\n').strip_prefix("::progress ") {
                let (fraction, message) = report.split_once(' ').unwrap_or((report, ""));
                let fraction = fraction
                    .parse::<f32>()
                    .ok()
                    .filter(|f| (0.0..=1.0).contains(f));
                progress.report(message, fraction).await;
            } else {
                if text.len() < MAX_OUTPUT {
                    text.push_str(&chunk);
                }
                pending.push_str(&chunk);
                linger.get_or_insert_with(|| tokio::time::Instant::now() + OUTPUT_LINGER);
            }
        }
        if pending.len() >= MAX_PIECE || (!more && !pending.is_empty()) {
            progress.output(std::mem::take(&mut pending)).await;
            linger = None;
        }
        if !more {
            break;
        }
    }
    text
}

/// "INPUT_TOKENS OUTPUT_TOKENS COST" of a `::usage` line.
fn parse_usage(text: &str) -> Option<(u64, u64, f64)> {
    let mut parts = text.split_whitespace();
    let input = parts.next()?.parse().ok()?;
    let output = parts.next()?.parse().ok()?;
    let cost: f64 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && cost.is_finite() && cost >= 0.0).then_some((input, output, cost))
}

/// Reads the next line into `piece`, or as much of it as `MAX_PIECE`
/// allows. Returns false at the end of the output. Cancel-safe: what was
/// read stays in `piece`.
async fn next_piece(
    reader: &mut tokio::io::BufReader<tokio::process::ChildStdout>,
    piece: &mut Vec<u8>,
) -> bool {
    use tokio::io::AsyncBufReadExt;
    loop {
        let available = match reader.fill_buf().await {
            Ok([]) | Err(_) => return false,
            Ok(available) => available,
        };
        let room = MAX_PIECE.saturating_sub(piece.len());
        let (take, line_ends) = match available.iter().take(room).position(|b| *b == b'\n') {
            Some(newline) => (newline + 1, true),
            None => (available.len().min(room), false),
        };
        piece.extend_from_slice(&available[..take]);
        reader.consume(take);
        if line_ends || piece.len() >= MAX_PIECE {
            return true;
        }
    }
}

/// Reads all of `pipe` and keeps its first `max` bytes.
async fn read_bounded(mut pipe: impl tokio::io::AsyncRead + Unpin, max: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}

/// SIGKILLs `root` and every descendant of it (found through /proc; two
/// passes, so that a child forked during the first is caught by the
/// second).
fn kill_tree(root: i32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for _ in 0..2 {
        for pid in descendants(root) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// `root` and its descendants, from the parent links in /proc.
fn descendants(root: i32) -> Vec<i32> {
    let mut children: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces, so parse
            // after its closing parenthesis.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() {
        if let Some(kids) = children.get(&tree[next]) {
            tree.extend(kids);
        }
        next += 1;
    }
    tree
}

/// PATH with this program's directory first.
fn task_path() -> Option<std::ffi::OsString> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.to_path_buf();
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&rest))).ok()
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
    if std::env::args().nth(1).as_deref() == Some("approve") {
        std::process::exit(approve::main().await);
    }
    let args = Args::parse();
    // First, before any thread starts: the credential is read once and
    // taken out of the environment (see the SDK's `credential`).
    let config = AgentConfig::from_env()?;
    // Logs to stderr (captured by the manager); traces exported over OTLP
    // when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = shepherd_telemetry::init("shepherd-agent");
    let runner = match args.exec {
        Some(program) => Runner::Exec {
            program,
            args: args.exec_args,
        },
        None => Runner::Shell(args.shell),
    };
    tracing::info!(agent_id = %config.agent_id, manager = %config.manager_url, "shepherd-agent starting");
    let agent = Agent {
        runner,
        approvals: shepherd_agent_sdk::approval_socket::ApprovalSocket::bind()?,
        task_path: task_path(),
        task_base_env: task_base_env(&args.pass_env),
    };
    let result = shepherd_agent_sdk::run(config, agent).await;
    telemetry.shutdown();
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::parse_usage;

    #[test]
    fn usage_lines_are_three_numbers_or_nothing() {
        assert_eq!(parse_usage("1200 300 0.42"), Some((1200, 300, 0.42)));
        for bad in [
            "", "1 2", "1 2 3 4", "a 2 3", "1 2 -3", "1 2 NaN", "1 2 inf",
        ] {
            assert_eq!(parse_usage(bad), None, "{bad:?}");
        }
    }
}
