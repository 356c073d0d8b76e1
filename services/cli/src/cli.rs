//! The command line: every operation of both APIs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "shepherd",
    version,
    about = "Command-line client for Shepherd's agent-manager and scheduler",
    after_help = "Exit codes: 0 ok, 1 other error, 2 bad usage or input, 3 not found, \
                  4 conflict (already exists, not ready), 5 service unavailable, 6 unauthenticated."
)]
pub(crate) struct Cli {
    /// agent-manager URL.
    #[arg(
        long,
        global = true,
        env = "SHEPHERD_AGENT_MANAGER_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub agent_manager_url: String,

    /// scheduler URL.
    #[arg(
        long,
        global = true,
        env = "SHEPHERD_SCHEDULER_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub scheduler_url: String,

    /// API token (sent as `authorization: Bearer <token>`).
    #[arg(long, global = true, env = "SHEPHERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// PEM CA to verify the services' TLS certificates (https URLs).
    #[arg(long, global = true, env = "SHEPHERD_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Agents: long-running processes supervised by the agent-manager.
    #[command(subcommand, alias = "agent")]
    Agents(AgentCommand),
    /// Workflows: what feeds tasks to an agent.
    #[command(subcommand, alias = "workflow")]
    Workflows(WorkflowCommand),
    /// Tasks of a workflow.
    #[command(subcommand, alias = "task")]
    Tasks(TaskCommand),
    /// The scheduler's runners.
    #[command(subcommand, alias = "runner")]
    Runners(RunnerCommand),
    /// The agent-manager's event log.
    #[command(subcommand, alias = "event")]
    Events(EventCommand),
    /// Approvals agents ask for before using a tool on their workflow's
    /// ask list.
    #[command(subcommand, alias = "approval")]
    Approvals(ApprovalCommand),
    /// Concurrency keys: scarce things workflows share (a provider
    /// account, a repository), and how many of their tasks may run at once.
    #[command(subcommand, alias = "key")]
    Keys(KeyCommand),
    /// Budgets: what a workflow, or an agent's workflows, may spend per
    /// period (tasks, task-seconds, reported cost).
    #[command(subcommand, alias = "budget")]
    Budgets(BudgetCommand),
    /// How the agent-manager contains agents: its containment mode, the
    /// limits it enforces and its default limits.
    Manager,
    /// The audit log of both services, newest first: every call that
    /// changed (or tried to change) something (role admin).
    Audit {
        /// Only calls by this credential name.
        #[arg(long)]
        who: Option<String>,
        /// Only calls about this id (agent, workflow, task, approval).
        #[arg(long)]
        target: Option<String>,
        /// Only calls in the last DURATION (e.g. 1h, 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: i32,
    },
    /// Serve the fleet as Model Context Protocol tools on stdin/stdout
    /// (for an AI assistant). Only reading tools unless --allow-writes.
    Mcp {
        /// Also offer the tools that change things (start, stop, restart,
        /// trigger, cancel, decide approvals).
        #[arg(long)]
        allow_writes: bool,
        /// Serve MCP over streamable HTTP on this address (path /mcp)
        /// instead of stdio. Loopback only (Host checked); with a token
        /// set (--token), clients must send it as a bearer token.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
    },
    /// The fleet live in the terminal: agents, workflows, tasks/s, recent
    /// events; keys restart/stop/start the selected agent (r/s/S), trigger
    /// the selected workflow (t), filter (/), switch lists (tab), quit (q).
    Top,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(crate) enum AgentCommand {
    /// Create (and start) an agent, from flags or a TOML file.
    Create(CreateAgent),
    /// List agents.
    List {
        /// Only agents with this status (pending, starting, ready, exited, failed, stopped, lost).
        #[arg(long)]
        status: Option<String>,
        /// Only agents with this label (KEY=VALUE; repeatable).
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
    },
    /// Show one agent (by id or name).
    Get { agent: String },
    /// Start a stopped agent.
    Start { agent: String },
    /// Stop an agent (SIGTERM, then SIGKILL after the grace period).
    Stop { agent: String },
    /// Restart an agent's process (generation + 1).
    Restart { agent: String },
    /// Stop dispatching to an agent (its process keeps running; tasks
    /// already dispatched run on; new ones queue) until `agents resume`.
    Pause {
        agent: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Dispatch to a paused agent again.
    Resume { agent: String },
    /// Give an external agent a new credential (printed once; the old one
    /// is refused from then on).
    RotateCredential { agent: String },
    /// Delete an agent (its workflows get disabled).
    Delete { agent: String },
    /// Last lines of an agent's stdout (or stderr).
    Logs {
        agent: String,
        #[arg(long)]
        stderr: bool,
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: i32,
    },
}

#[derive(Args, Debug)]
pub(crate) struct CreateAgent {
    /// TOML file with the agent's spec (see README); flags are ignored.
    #[arg(long, short, conflicts_with_all = ["name", "command"])]
    pub file: Option<PathBuf>,
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    /// Program to run.
    #[arg(long, required_unless_present_any = ["file", "external", "image"])]
    pub command: Option<String>,
    /// An external agent: launched by something else, connecting with the
    /// credential printed (once) at creation.
    #[arg(long, conflicts_with_all = ["command", "file"])]
    pub external: bool,
    /// A Kubernetes agent (experimental): one Pod of this image per
    /// generation (`--command` then overrides the image's entrypoint).
    #[arg(long, conflicts_with_all = ["external", "file"])]
    pub image: Option<String>,
    /// Argument for the program (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = key_value)]
    pub env: Vec<(String, String)>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = key_value)]
    pub labels: Vec<(String, String)>,
    #[arg(long)]
    pub working_dir: Option<String>,
    /// never, on-failure or always.
    #[arg(long, default_value = "on-failure")]
    pub restart: String,
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// Memory limit of the agent's whole process tree, e.g. 512MiB or 2G.
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// CPU limit of the tree, in cores (fractional, e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Most processes (and threads) in the tree.
    #[arg(long)]
    pub max_processes: Option<u32>,
    /// Create without starting.
    #[arg(long)]
    pub stopped: bool,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(crate) enum WorkflowCommand {
    /// Create a workflow for an agent.
    Create(CreateWorkflow),
    /// Why isn't it running? A diagnosis and a one-line verdict.
    Why {
        workflow: String,
    },
    /// List workflows.
    List {
        /// Only this agent's (id or name).
        #[arg(long)]
        agent: Option<String>,
        /// Only enabled (true) or disabled (false) ones.
        #[arg(long)]
        enabled: Option<bool>,
    },
    /// Show one workflow (by id or name).
    Get {
        workflow: String,
    },
    Enable {
        workflow: String,
    },
    Disable {
        workflow: String,
    },
    Delete {
        workflow: String,
    },
    /// Enqueue a task.
    Trigger(TriggerWorkflow),
    /// Pause: none of its tasks is dispatched until it is resumed; what
    /// its triggers make meanwhile is skipped (default) or queued.
    Pause {
        workflow: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Queue what its triggers make while paused (at most 1000), to run
        /// after the resume, instead of skipping it.
        #[arg(long)]
        queue: bool,
    },
    /// Resume a paused workflow: its queued tasks run.
    Resume {
        workflow: String,
    },
    /// Make the tasks of a schedule's past ticks, from --from to --to
    /// (both included, at most 1000 ticks); a tick that has its task gets
    /// no second one.
    Backfill {
        workflow: String,
        /// RFC 3339, e.g. 2026-12-01T00:00:00Z.
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        from: std::time::SystemTime,
        /// RFC 3339; default: now.
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        to: Option<std::time::SystemTime>,
    },
    /// Give a webhook workflow a new secret (printed once; the old one
    /// stops working).
    RotateSecret {
        workflow: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum BudgetCommand {
    /// Every budget, with its usage this period.
    List,
    /// Set the budget of a workflow or an agent (replacing its budget).
    Put {
        #[command(flatten)]
        subject: BudgetSubject,
        /// day, week, month (UTC), or a sliding window, e.g. 6h.
        #[arg(long)]
        per: String,
        #[arg(long, default_value_t = 0)]
        max_tasks: u64,
        #[arg(long, default_value_t = 0.0)]
        max_task_seconds: f64,
        #[arg(long, default_value_t = 0.0)]
        max_cost: f64,
        /// How long running tasks have once it is spent (default 30s).
        #[arg(long, value_parser = duration)]
        grace: Option<Duration>,
    },
    /// Delete the budget of a workflow or an agent.
    Delete {
        #[command(flatten)]
        subject: BudgetSubject,
    },
}

/// Whose budget: one workflow's or one agent's (id or name).
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct BudgetSubject {
    #[arg(long)]
    pub workflow: Option<String>,
    #[arg(long)]
    pub agent: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum KeyCommand {
    /// Every key, with the tasks holding it and the workflows waiting.
    List,
    /// Define a key, or change its limit.
    Put {
        /// e.g. provider:anthropic, repo:web.
        name: String,
        /// Tasks holding it that may run at once.
        #[arg(long)]
        limit: u32,
        /// Also at most this many of them start per --per.
        #[arg(long, requires = "per")]
        rate: Option<u32>,
        /// The rate's period (e.g. 1m).
        #[arg(long, requires = "rate", value_parser = humantime::parse_duration)]
        per: Option<std::time::Duration>,
    },
    /// Delete a key no workflow names.
    Delete { name: String },
}

#[derive(Args, Debug)]
pub(crate) struct CreateWorkflow {
    #[arg(long)]
    pub name: String,
    /// The agent (id or name).
    #[arg(long)]
    pub agent: String,
    /// Prompt template with {{title}}, {{body}}, {{url}}, {{labels}}, {{metadata.KEY}}.
    #[arg(long, default_value = "")]
    pub template: String,
    /// One task every period (e.g. 30s).
    #[arg(long, value_parser = duration, conflicts_with_all = ["cron", "delay"])]
    pub interval: Option<Duration>,
    /// One task at each match of a cron expression (sec min hour dom month dow).
    #[arg(long, conflicts_with = "delay")]
    pub cron: Option<String>,
    /// Schedules: ticks missed while no scheduler ran make none, the
    /// latest (default) or all of them within --catch-up-window.
    #[arg(long, value_parser = ["none", "latest", "all"])]
    pub catch_up: Option<String>,
    /// Schedules: how far back missed ticks are caught up (default 1d).
    #[arg(long, value_parser = duration)]
    pub catch_up_window: Option<Duration>,
    /// Schedules: a tick while earlier tasks wait or run makes a task
    /// (allow, default), is skipped (skip) or waits, one at most
    /// (buffer-one).
    #[arg(long, value_parser = ["allow", "skip", "buffer-one"])]
    pub overlap: Option<String>,
    /// One task, once, after this delay.
    #[arg(long, value_parser = duration, conflicts_with = "webhook")]
    pub delay: Option<Duration>,
    /// One task per finished task of this workflow (id or name): result
    /// chaining; {{parent.output}} etc. in the template.
    #[arg(long, conflicts_with_all = ["interval", "cron", "delay", "webhook"])]
    pub after: Option<String>,
    /// With --after: succeeded (default), failed or any.
    #[arg(long, requires = "after", default_value = "succeeded")]
    pub on: String,
    /// One task each time an agent restarts: the workflow's own (no value)
    /// or the named one (id or name).
    #[arg(long, num_args = 0..=1, default_missing_value = "", conflicts_with_all = ["interval", "cron", "delay", "webhook"])]
    pub on_agent_restart: Option<String>,
    /// One task per signed webhook delivery (the secret is printed once).
    #[arg(long, conflicts_with_all = ["interval", "cron"])]
    pub webhook: bool,
    /// Webhook: only these events (X-GitHub-Event), e.g. issues (repeatable).
    #[arg(long = "event", requires = "webhook")]
    pub events: Vec<String>,
    /// Webhook: only these JSON actions, e.g. opened (repeatable).
    #[arg(long = "action", requires = "webhook")]
    pub actions: Vec<String>,
    /// Webhook: FIELD=/json/pointer, FIELD one of title, body, url, labels,
    /// metadata.KEY (repeatable), e.g. title=/issue/title.
    #[arg(long = "map", requires = "webhook", value_parser = key_value)]
    pub mapping: Vec<(String, String)>,
    /// Create disabled.
    #[arg(long)]
    pub disabled: bool,
    #[arg(long, default_value_t = 0)]
    pub max_concurrency: u32,
    #[arg(long, default_value_t = 0)]
    pub max_attempts: u32,
    /// A concurrency key its tasks hold while they run (repeatable;
    /// defined with `shepherd keys put`).
    #[arg(long = "key")]
    pub keys: Vec<String>,
    /// Tool policy: a tool the agent may use (repeatable; none: any).
    #[arg(long = "allow-tool")]
    pub allowed_tools: Vec<String>,
    /// Tool policy: a tool the agent must not use (repeatable).
    #[arg(long = "deny-tool")]
    pub denied_tools: Vec<String>,
    /// Tool policy: a tool the agent asks approval for before each use
    /// (repeatable; `shepherd approvals`).
    #[arg(long = "ask-tool")]
    pub ask_tools: Vec<String>,
}

#[derive(Args, Debug)]
pub(crate) struct TriggerWorkflow {
    pub workflow: String,
    /// Idempotency key (default: a fresh one).
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long, default_value = "")]
    pub title: String,
    #[arg(long, default_value = "")]
    pub body: String,
    #[arg(long, default_value = "")]
    pub url: String,
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Metadata KEY=VALUE (repeatable).
    #[arg(long = "meta", value_parser = key_value)]
    pub metadata: Vec<(String, String)>,
    /// Higher runs first (within the workflow and its keys).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TaskCommand {
    /// Tasks of a workflow.
    List {
        workflow: String,
        /// pending, dispatched, succeeded, failed, timed_out, cancelled or skipped.
        #[arg(long)]
        state: Option<String>,
        /// Only dead-lettered tasks (out of attempts).
        #[arg(long)]
        dead_letter: bool,
    },
    /// One task by id ("<workflow_id>:<key>").
    Get { task: String },
    /// Cancel a task: a pending one at once, a running one through its
    /// agent. Repeating it is harmless.
    Cancel { task: String },
    /// Follow task changes live (state, attempt, progress, output). With a
    /// TASK, follows that task until it finishes; resumes by itself after a
    /// disconnect.
    Watch {
        task: Option<String>,
        /// Only this workflow's tasks.
        #[arg(long)]
        workflow: Option<String>,
        /// Resume after this cursor (printed with every change).
        #[arg(long, default_value = "")]
        after: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum RunnerCommand {
    /// Runners of all workflows (or one agent's).
    List {
        #[arg(long)]
        agent: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum EventCommand {
    /// Follow the event log live, resuming after disconnects.
    Watch {
        /// Start after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only this agent's events (id or name).
        #[arg(long)]
        agent: Option<String>,
        /// Exit after this many events.
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ApprovalCommand {
    /// List approvals, newest first (pending ones by default).
    List {
        /// pending, approved, denied, expired, withdrawn or all.
        #[arg(long, default_value = "pending")]
        state: String,
        /// Only this agent's (id or name).
        #[arg(long)]
        agent: Option<String>,
        /// Only this workflow's (id or name).
        #[arg(long)]
        workflow: Option<String>,
    },
    /// Show one approval: the tool, its input and why the agent asks.
    Get { approval: String },
    /// Let the agent go on (recorded with your credentials' name).
    Approve {
        approval: String,
        #[arg(long, short, default_value = "")]
        comment: String,
    },
    /// Refuse it: the agent is told, with your comment.
    Deny {
        approval: String,
        #[arg(long, short, default_value = "")]
        comment: String,
    },
    /// Print the pending approvals, then each approval asked or decided
    /// from now on, as it happens.
    Watch {
        /// Exit after this many events.
        #[arg(long)]
        limit: Option<usize>,
    },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("{text:?}: {err} (use e.g. 30s, 5m)"))
}

/// A size in bytes: a number with an optional unit (K, M, G, T in powers
/// of 1024, with or without "iB"/"B").
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 512MiB, 2G, 1048576)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use K, M, G or T)"
            ));
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512 kb"), Ok(512 << 10));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
