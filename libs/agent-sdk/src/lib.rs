//! The agent SDK: everything an agent process needs to take work from
//! Shepherd.
//!
//! An agent is started by the agent-manager with `SHEPHERD_AGENT_ID`,
//! `SHEPHERD_SESSION_TOKEN` and `SHEPHERD_MANAGER_URL` in its environment.
//! [`run`] opens the session (`AgentSession.Connect`), which makes the agent
//! READY; then it receives tasks, hands each to your [`TaskHandler`]
//! (concurrently), and reports accepted / completed (a task whose handler
//! finishes at once is reported completed only). It heartbeats, detects
//! a silent manager, and reconnects with backoff when the connection drops.
//! `SHEPHERD_MANAGER_URL` may list several managers sharing one database,
//! comma-separated (external agents): a lost session is retried on the same
//! manager once, then on the next one.
//!
//! Reports are never dropped: a finished task's report is kept until the
//! manager acknowledges that it recorded it (`ReportAck`), and sent again on
//! every new session until then. A task keeps running across a reconnect;
//! when the manager delivers it again meanwhile (a later attempt of the same
//! task), the running execution or the kept report answers for it, so one
//! process never runs a task twice side by side. Every hello names the
//! tasks the process holds, so a reconnect (also to a restarted manager that
//! adopted the process) carries them over to the new session.
//!
//! ```no_run
//! use shepherd_agent_sdk::{AgentConfig, TaskHandler, TaskOutcome, TaskResult, IncomingTask};
//!
//! struct Echo;
//! impl TaskHandler for Echo {
//!     async fn handle(&self, task: IncomingTask) -> TaskResult {
//!         TaskResult::success(String::from_utf8_lossy(&task.payload))
//!     }
//! }
//!
//! # async fn example() -> Result<(), shepherd_agent_sdk::SdkError> {
//! shepherd_agent_sdk::run(AgentConfig::from_env()?, Echo).await
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use shepherd_proto::agentmanager::v1::{
    AgentHeartbeat, AgentMessage, HeldTask, Hello, TaskAccepted, TaskCompleted, agent_message,
    agent_session_client::AgentSessionClient, manager_message,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::Instrument;

pub use shepherd_proto::agentmanager::v1::TaskOutcome;

pub mod approval_socket;
mod approvals;
mod credential;

pub use approvals::{ApprovalDecision, ApprovalState, Approver};

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error(
        "environment variable {0} is not set; agents are started by the agent-manager, which sets it"
    )]
    MissingEnv(&'static str),
    #[error("invalid manager URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The manager refused the session token: this process belongs to an
    /// earlier generation (or the token is wrong). Retrying cannot help.
    #[error("the agent-manager refused the session: {0}")]
    Refused(String),
}

/// 128 random bits, hex (a process's instance id).
fn random_instance_id() -> String {
    let mut bytes = [0u8; 16];
    // Without randomness, the pid and start time still tell instances apart.
    if getrandom::fill(&mut bytes).is_err() {
        let seed = u128::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
        bytes = seed.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long an agent runs without hearing from its manager by default.
pub const DEFAULT_ORPHAN_TIMEOUT: Duration = Duration::from_secs(300);

/// Where to connect and how to authenticate.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub agent_id: String,
    /// The session token the manager gave this process
    /// (`SHEPHERD_SESSION_TOKEN`), or an external agent's long-lived
    /// credential (`SHEPHERD_AGENT_CREDENTIAL`).
    pub session_token: String,
    /// Random per process start: for an external agent, a new instance is a
    /// restart while the same one reconnecting is not.
    pub instance_id: String,
    pub manager_url: String,
    /// PEM CA to verify the manager's TLS certificate (https URLs).
    pub manager_ca_file: Option<std::path::PathBuf>,
    /// How long the agent keeps running without hearing from its manager
    /// before it exits with its whole process group, so that an agent never
    /// outlives its manager for good (`SHEPHERD_ORPHAN_TIMEOUT`, default
    /// 5 minutes; "0s" never).
    pub orphan_timeout: Option<Duration>,
}

impl AgentConfig {
    pub fn from_env() -> Result<Self, SdkError> {
        let var = |name: &'static str| std::env::var(name).map_err(|_| SdkError::MissingEnv(name));
        Ok(Self {
            agent_id: var("SHEPHERD_AGENT_ID")?,
            // Read once, then gone from the environment (see `credential`).
            session_token: credential::take(&[
                "SHEPHERD_SESSION_TOKEN",
                "SHEPHERD_AGENT_CREDENTIAL",
            ])
            .ok_or(SdkError::MissingEnv(
                "SHEPHERD_SESSION_TOKEN (or SHEPHERD_AGENT_CREDENTIAL)",
            ))?,
            instance_id: random_instance_id(),
            manager_url: var("SHEPHERD_MANAGER_URL")?,
            manager_ca_file: std::env::var_os("SHEPHERD_MANAGER_CA_FILE").map(Into::into),
            orphan_timeout: match std::env::var("SHEPHERD_ORPHAN_TIMEOUT") {
                Ok(text) => {
                    let timeout = humantime::parse_duration(&text).map_err(|err| {
                        SdkError::InvalidConfig(format!(
                            "SHEPHERD_ORPHAN_TIMEOUT is not a duration ({err}); use e.g. 5m"
                        ))
                    })?;
                    (!timeout.is_zero()).then_some(timeout)
                }
                Err(_) => Some(DEFAULT_ORPHAN_TIMEOUT),
            },
        })
    }
}

/// A task delivered to the agent.
#[derive(Clone, Debug)]
pub struct IncomingTask {
    pub task_id: String,
    pub payload: Vec<u8>,
    pub attempt: u32,
    /// W3C trace context (`traceparent`, `tracestate`) of the dispatch.
    pub trace_context: HashMap<String, String>,
    /// The task as data, when the dispatcher sent it (the scheduler does).
    pub spec: Option<TaskSpec>,
    /// When the manager will cancel the task (its timeout), if ever.
    pub deadline: Option<std::time::SystemTime>,
    /// Cancelled when the manager asks the agent to stop this task (its
    /// deadline passed, or someone cancelled it). A handler must then stop
    /// what it started and return soon: an agent that has not reported the
    /// task within the manager's grace period is restarted.
    pub cancel: CancellationToken,
    /// Reports progress and output while the task runs (WatchTasks shows
    /// them).
    pub progress: Progress,
    /// Asks for approval before using a tool on the workflow's `ask` list
    /// (see [`IncomingTask::ask_approval`]).
    pub approver: Approver,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("task_id", &self.task_id)
            .finish()
    }
}

/// A running task's line back to whoever watches it: a status message, a
/// fraction done, chunks of output. Best effort: what is sent while no
/// session is open is dropped (the task's final report never is).
#[derive(Clone)]
pub struct Progress {
    task_id: String,
    ledger: Ledger,
}

impl Progress {
    /// A short status message (at most 1 KiB is kept) and how far along the
    /// task is, from 0 to 1, if known.
    pub async fn report(&self, message: impl Into<String>, fraction: Option<f32>) {
        self.send(message.into(), fraction.unwrap_or(-1.0), String::new())
            .await;
    }

    /// A chunk of the task's output (at most 16 KiB per chunk is kept).
    pub async fn output(&self, chunk: impl Into<String>) {
        self.send(String::new(), -1.0, chunk.into()).await;
    }

    async fn send(&self, message: String, fraction: f32, output: String) {
        self.ledger.accept(&self.task_id).await;
        let Some((attempt, session)) = self.ledger.progress_route(&self.task_id) else {
            return;
        };
        let progress = AgentMessage {
            kind: Some(agent_message::Kind::TaskProgress(
                shepherd_proto::agentmanager::v1::TaskProgress {
                    task_id: self.task_id.clone(),
                    attempt,
                    message,
                    fraction,
                    output,
                },
            )),
        };
        let _ = session.send(progress).await;
    }
}

/// A task as structured data. Pass its fields to whatever runs the task
/// as data (environment, stdin), never pasted into a command line: see
/// [`IncomingTask::env`].
#[derive(Clone, Debug, Default)]
pub struct TaskSpec {
    /// The workflow's template rendered with the fields: text (a prompt).
    pub prompt: String,
    /// The template rendered for /bin/sh, referring to the fields only
    /// through the variables of [`IncomingTask::env`].
    pub shell_script: String,
    pub title: String,
    pub body: String,
    pub url: String,
    pub labels: Vec<String>,
    pub metadata: HashMap<String, String>,
    pub workflow_id: String,
    pub workflow_name: String,
    /// The workflow's tool policy: what the agent may and may not use,
    /// and what it must ask approval for first.
    pub allowed_tools: Vec<String>,
    pub denied_tools: Vec<String>,
    pub ask_tools: Vec<String>,
}

impl IncomingTask {
    /// Asks a person for approval to use `tool` (with `input`, summarised,
    /// for `reason`) and waits for the decision: the task's approval is
    /// durable at the manager and survives reconnects and manager restarts.
    /// A cancelled task's request is withdrawn.
    pub async fn ask_approval(
        &self,
        tool: impl Into<String>,
        input: impl Into<String>,
        reason: impl Into<String>,
    ) -> ApprovalDecision {
        self.approver.ask(tool, input, reason).await
    }

    /// The task's `SHEPHERD_TASK_*` / `SHEPHERD_WORKFLOW_*` environment:
    /// id, attempt, and (with a spec) title, body, url, labels
    /// (comma-separated), every metadata key, the workflow, and the tool
    /// policy (`SHEPHERD_ALLOWED_TOOLS`, `SHEPHERD_DENIED_TOOLS`).
    pub fn env(&self) -> Vec<(String, String)> {
        use shepherd_proto::task_env;
        let mut env = vec![
            (task_env::ID.to_owned(), self.task_id.clone()),
            (task_env::ATTEMPT.to_owned(), self.attempt.to_string()),
        ];
        if let Some(spec) = &self.spec {
            env.extend([
                (task_env::TITLE.to_owned(), spec.title.clone()),
                (task_env::BODY.to_owned(), spec.body.clone()),
                (task_env::URL.to_owned(), spec.url.clone()),
                (task_env::LABELS.to_owned(), spec.labels.join(",")),
                (task_env::WORKFLOW_ID.to_owned(), spec.workflow_id.clone()),
                (
                    task_env::WORKFLOW_NAME.to_owned(),
                    spec.workflow_name.clone(),
                ),
                (
                    task_env::ALLOWED_TOOLS.to_owned(),
                    spec.allowed_tools.join(","),
                ),
                (
                    task_env::DENIED_TOOLS.to_owned(),
                    spec.denied_tools.join(","),
                ),
                (task_env::ASK_TOOLS.to_owned(), spec.ask_tools.join(",")),
            ]);
            env.extend(
                spec.metadata
                    .iter()
                    .map(|(key, value)| (task_env::metadata(key), value.clone())),
            );
        }
        env
    }
}

impl From<shepherd_proto::agentmanager::v1::TaskSpec> for TaskSpec {
    fn from(spec: shepherd_proto::agentmanager::v1::TaskSpec) -> Self {
        Self {
            prompt: spec.prompt,
            shell_script: spec.shell_script,
            title: spec.title,
            body: spec.body,
            url: spec.url,
            labels: spec.labels,
            metadata: spec.metadata,
            workflow_id: spec.workflow_id,
            workflow_name: spec.workflow_name,
            allowed_tools: spec.allowed_tools,
            denied_tools: spec.denied_tools,
            ask_tools: spec.ask_tools,
        }
    }
}

/// What a handler reports for a task.
#[derive(Clone, Debug)]
pub struct TaskResult {
    pub outcome: TaskOutcome,
    pub output: String,
}

impl TaskResult {
    pub fn success(output: impl Into<String>) -> Self {
        Self {
            outcome: TaskOutcome::Succeeded,
            output: output.into(),
        }
    }

    pub fn failure(output: impl Into<String>) -> Self {
        Self {
            outcome: TaskOutcome::Failed,
            output: output.into(),
        }
    }
}

/// Your agent's work. Called once per task, concurrently for concurrent
/// tasks.
pub trait TaskHandler: Send + Sync + 'static {
    fn handle(&self, task: IncomingTask) -> impl Future<Output = TaskResult> + Send;
}

/// Runs the agent until the manager refuses the session (a stale or wrong
/// token: returns `SdkError::Refused`). Connection failures are retried with
/// capped exponential backoff.
pub async fn run<H: TaskHandler>(config: AgentConfig, handler: H) -> Result<(), SdkError> {
    let invalid = |reason: String| SdkError::InvalidUrl {
        url: config.manager_url.clone(),
        reason,
    };
    let pem = match &config.manager_ca_file {
        Some(ca) => Some(
            std::fs::read(ca)
                .map_err(|err| invalid(format!("reading CA {}: {err}", ca.display())))?,
        ),
        None => None,
    };
    // Several URLs (comma-separated): managers sharing one database; an
    // external agent may connect to any of them.
    let mut channels = Vec::new();
    for url in config
        .manager_url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
    {
        let mut endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|err| invalid(err.to_string()))?;
        if let Some(pem) = &pem {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|err| invalid(err.to_string()))?;
        }
        channels.push(endpoint.tcp_nodelay(true).connect_lazy());
    }
    if channels.is_empty() {
        return Err(invalid("no manager URL".into()));
    }
    let mut current = 0;
    let handler = Arc::new(handler);
    let ledger = Ledger::default();
    if let Some(timeout) = config.orphan_timeout {
        tokio::spawn(orphan_watchdog(ledger.clone(), timeout));
    }
    let mut backoff = Duration::from_millis(50);
    loop {
        match session(&config, channels[current].clone(), handler.clone(), &ledger).await {
            SessionEnd::Refused(message) => return Err(SdkError::Refused(message)),
            SessionEnd::Exit(reason) => {
                tracing::info!(%reason, "the manager asked this agent to exit");
                ledger.cancel_all();
                return Ok(());
            }
            SessionEnd::Lost { was_ready, reason } => {
                if was_ready {
                    // The same manager first: a blip keeps the session's
                    // tasks (a session elsewhere is a new generation).
                    backoff = Duration::from_millis(50);
                } else {
                    // That manager is unreachable: the next one.
                    current = (current + 1) % channels.len();
                }
                tracing::warn!(%reason, retry_in = ?backoff, "session lost; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

enum SessionEnd {
    Refused(String),
    /// The manager asked the agent to exit (an external agent's restart,
    /// stop or delete).
    Exit(String),
    Lost {
        was_ready: bool,
        reason: String,
    },
}

/// What the process knows of its tasks across sessions: which run now, and
/// which finished with a report the manager has not acknowledged yet.
#[derive(Clone, Default)]
struct Ledger {
    inner: Arc<Mutex<LedgerState>>,
}

#[derive(Default)]
struct LedgerState {
    /// Running tasks: the latest attempt delivered for each, and the token
    /// that cancels it.
    running: HashMap<String, Running>,
    /// Finished tasks' reports, until acknowledged.
    unacked: HashMap<String, TaskCompleted>,
    /// Approval requests waiting for their answer, by request id.
    approvals: HashMap<String, approvals::PendingApproval>,
    /// The live session's outbound messages, if a session is open.
    session: Option<mpsc::Sender<AgentMessage>>,
    /// When the manager was last heard from (or the agent started).
    last_heard: Option<Instant>,
}

struct Running {
    attempt: u32,
    deadline: Option<prost_types::Timestamp>,
    cancel: CancellationToken,
    /// Whether the manager was told the task runs (`TaskAccepted`).
    accepted: bool,
}

/// What to do with a delivered task.
enum Delivery {
    /// New: run it; this token cancels it.
    Run(CancellationToken),
    /// Already running: the running execution answers for this attempt.
    Running,
    /// Already finished: send this (kept) report again, for this attempt.
    Report(AgentMessage),
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        // Maps of ids and reports: no invariant a panicking holder breaks.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn deliver(
        &self,
        task_id: &str,
        attempt: u32,
        deadline: Option<prost_types::Timestamp>,
    ) -> Delivery {
        let mut state = self.lock();
        if let Some(running) = state.running.get_mut(task_id) {
            if attempt > running.attempt {
                running.attempt = attempt;
                running.deadline = deadline;
            }
            return Delivery::Running;
        }
        if let Some(report) = state.unacked.get_mut(task_id) {
            report.attempt = report.attempt.max(attempt);
            return Delivery::Report(completed_message(report.clone()));
        }
        let cancel = CancellationToken::new();
        let running = Running {
            attempt,
            deadline,
            cancel: cancel.clone(),
            accepted: false,
        };
        state.running.insert(task_id.to_owned(), running);
        Delivery::Run(cancel)
    }

    /// Where a running task's progress goes: its latest attempt and the
    /// live session (None: not running, or no session).
    fn progress_route(&self, task_id: &str) -> Option<(u32, mpsc::Sender<AgentMessage>)> {
        let state = self.lock();
        let attempt = state.running.get(task_id)?.attempt;
        Some((attempt, state.session.clone()?))
    }

    /// Tells the manager, once, that a running task runs: before the first
    /// thing said about it (progress, an approval request) or once its
    /// handler has to wait. A task that finishes at once says nothing
    /// before its report, which implies acceptance: a no-op task costs
    /// one message each way instead of two (and the manager one event).
    async fn accept(&self, task_id: &str) {
        let session = {
            let mut state = self.lock();
            match state.running.get_mut(task_id) {
                Some(running) if !running.accepted => {
                    running.accepted = true;
                    state.session.clone()
                }
                _ => None,
            }
        };
        // If the session is gone the task runs anyway: the next session's
        // hello names it.
        if let Some(session) = session {
            let _ = session.send(accepted_message(task_id)).await;
        }
    }

    /// Every task this process holds (running, or finished and not
    /// acknowledged), for the hello of a new session.
    fn held(&self) -> Vec<HeldTask> {
        let state = self.lock();
        let running = state.running.iter().map(|(task_id, running)| HeldTask {
            task_id: task_id.clone(),
            attempt: running.attempt,
            deadline: running.deadline,
        });
        let finished = state.unacked.values().map(|report| HeldTask {
            task_id: report.task_id.clone(),
            attempt: report.attempt,
            deadline: None,
        });
        running.chain(finished).collect()
    }

    /// Cancels a running task (the manager asked to stop it).
    fn cancel(&self, task_id: &str) {
        if let Some(running) = self.lock().running.get(task_id) {
            running.cancel.cancel();
        }
    }

    /// Stops every running task (the agent is exiting).
    fn cancel_all(&self) {
        for running in self.lock().running.values() {
            running.cancel.cancel();
        }
    }

    /// Keeps the finished task's report and returns it with the latest
    /// attempt delivered meanwhile, and the session to send it on.
    fn finish(
        &self,
        task_id: &str,
        result: TaskResult,
    ) -> (AgentMessage, Option<mpsc::Sender<AgentMessage>>) {
        let mut state = self.lock();
        let attempt = state
            .running
            .remove(task_id)
            .map_or(0, |running| running.attempt);
        let report = TaskCompleted {
            task_id: task_id.to_owned(),
            outcome: result.outcome as i32,
            output: result.output,
            attempt,
        };
        state.unacked.insert(task_id.to_owned(), report.clone());
        (completed_message(report), state.session.clone())
    }

    fn acknowledged(&self, task_id: &str, attempt: u32) {
        let mut state = self.lock();
        // A report re-sent for a later attempt waits for its own ack.
        if state
            .unacked
            .get(task_id)
            .is_some_and(|report| report.attempt == attempt)
        {
            state.unacked.remove(task_id);
        }
    }

    /// Makes `outbound` the live session; returns the reports to send again.
    fn open(&self, outbound: mpsc::Sender<AgentMessage>) -> Vec<AgentMessage> {
        let mut state = self.lock();
        state.session = Some(outbound);
        state
            .unacked
            .values()
            .cloned()
            .map(completed_message)
            .collect()
    }

    fn close(&self) {
        self.lock().session = None;
    }

    fn heard(&self) {
        self.lock().last_heard = Some(Instant::now());
    }

    fn silent_for(&self) -> Duration {
        let mut state = self.lock();
        let since = *state.last_heard.get_or_insert_with(Instant::now);
        since.elapsed()
    }
}

/// Exits with the agent's whole process group once the manager has not
/// been heard from for `timeout`: a manager that is gone for good (killed,
/// never restarted) must not leave its agents, and whatever they started,
/// running forever.
async fn orphan_watchdog(ledger: Ledger, timeout: Duration) {
    loop {
        tokio::time::sleep(Duration::from_secs(1).min(timeout)).await;
        let silent = ledger.silent_for();
        if silent < timeout {
            continue;
        }
        tracing::error!(
            ?silent,
            "the agent-manager has been unreachable past the orphan timeout; exiting with the agent's process group"
        );
        use nix::unistd::{getpgrp, getpid};
        // Only a group of our own (the manager starts every agent as a
        // group leader): never the group of a shell that started us.
        if getpgrp() == getpid() {
            let _ = nix::sys::signal::killpg(getpgrp(), nix::sys::signal::Signal::SIGKILL);
        }
        std::process::exit(1);
    }
}

/// Test hook: `SHEPHERD_FAILPOINTS` naming `sdk.ignore_cancel` makes the
/// agent ignore Cancel messages (a wedged agent, for tests of the
/// manager's grace period). Off unless set.
fn ignores_cancel() -> bool {
    static IGNORE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IGNORE.get_or_init(|| {
        std::env::var("SHEPHERD_FAILPOINTS").is_ok_and(|points| {
            points
                .split(',')
                .any(|p| p.trim().starts_with("sdk.ignore_cancel"))
        })
    })
}

fn completed_message(report: TaskCompleted) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::TaskCompleted(report)),
    }
}

/// One session, from hello to its end.
async fn session<H: TaskHandler>(
    config: &AgentConfig,
    channel: Channel,
    handler: Arc<H>,
    ledger: &Ledger,
) -> SessionEnd {
    let end = session_inner(config, channel, handler, ledger).await;
    ledger.close();
    end
}

async fn session_inner<H: TaskHandler>(
    config: &AgentConfig,
    channel: Channel,
    handler: Arc<H>,
    ledger: &Ledger,
) -> SessionEnd {
    let (outbound, requests) = mpsc::channel::<AgentMessage>(256);
    let hello = AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: config.agent_id.clone(),
            session_token: config.session_token.clone(),
            held_tasks: ledger.held(),
            instance_id: config.instance_id.clone(),
        })),
    };
    // The channel is empty: this cannot fail.
    let _ = outbound.try_send(hello);

    let mut client = AgentSessionClient::new(channel);
    let mut inbound = match client.connect(ReceiverStream::new(requests)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return end_for(status, false),
    };

    // The first message is Welcome: it says how often to heartbeat.
    let mut interval = Duration::from_secs(5);
    let mut ticker = tokio::time::interval(interval);
    let mut silent_until = Instant::now() + interval * 3;
    let mut ready = false;
    loop {
        tokio::select! {
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => return lost(ready, "the manager closed the session"),
                    Err(status) => return end_for(status, ready),
                };
                silent_until = Instant::now() + interval * 3;
                ledger.heard();
                match message.kind {
                    Some(manager_message::Kind::Welcome(welcome)) => {
                        if let Some(every) = welcome.heartbeat_interval.and_then(|d| Duration::try_from(d).ok())
                            && !every.is_zero()
                        {
                            interval = every;
                            ticker = tokio::time::interval(interval);
                            silent_until = Instant::now() + interval * 3;
                        }
                        ready = true;
                        tracing::info!(generation = welcome.generation, "session open; agent is ready");
                        // Unacknowledged reports and unanswered approval
                        // requests go out again on every new session.
                        let reports = ledger.open(outbound.clone());
                        let pending = ledger.pending_approvals();
                        for report in reports.into_iter().chain(pending) {
                            if outbound.send(report).await.is_err() {
                                return lost(ready, "session request stream closed");
                            }
                        }
                    }
                    Some(manager_message::Kind::Task(task)) => {
                        let delivery = ledger.deliver(&task.task_id, task.attempt, task.deadline);
                        let cancel = match &delivery {
                            Delivery::Run(cancel) => cancel.clone(),
                            _ => CancellationToken::new(),
                        };
                        let progress_task_id = task.task_id.clone();
                        let approver = Approver {
                            task_id: task.task_id.clone(),
                            workflow_id: task.spec.as_ref().map(|spec| spec.workflow_id.clone()).unwrap_or_default(),
                            cancel: cancel.clone(),
                            ledger: ledger.clone(),
                        };
                        let incoming = IncomingTask {
                            task_id: task.task_id,
                            payload: task.payload,
                            attempt: task.attempt,
                            trace_context: task.trace_context,
                            spec: task.spec.map(TaskSpec::from),
                            deadline: task
                                .deadline
                                .and_then(|at| std::time::SystemTime::try_from(at).ok()),
                            cancel,
                            progress: Progress {
                                task_id: progress_task_id,
                                ledger: ledger.clone(),
                            },
                            approver,
                        };
                        match delivery {
                            Delivery::Run(_) => spawn_task(&handler, ledger, incoming),
                            Delivery::Running => {
                                tracing::info!(task_id = %incoming.task_id, attempt = incoming.attempt, "task delivered again while it runs; the running execution answers for it");
                                let _ = outbound.send(accepted_message(&incoming.task_id)).await;
                            }
                            Delivery::Report(report) => {
                                tracing::info!(task_id = %incoming.task_id, attempt = incoming.attempt, "task delivered again after it finished; sending its report again");
                                let _ = outbound.send(report).await;
                            }
                        }
                    }
                    Some(manager_message::Kind::ReportAck(ack)) => {
                        ledger.acknowledged(&ack.task_id, ack.attempt);
                    }
                    Some(manager_message::Kind::Cancel(cancel)) => {
                        if ignores_cancel() {
                            tracing::warn!(task_id = %cancel.task_id, "ignoring a cancel (failpoint sdk.ignore_cancel)");
                        } else {
                            tracing::info!(task_id = %cancel.task_id, reason = %cancel.reason, "cancelling task");
                            ledger.cancel(&cancel.task_id);
                        }
                    }
                    Some(manager_message::Kind::ApprovalAnswer(answer)) => {
                        ledger.approval_answered(answer);
                    }
                    Some(manager_message::Kind::Exit(exit)) => return SessionEnd::Exit(exit.reason),
                    Some(manager_message::Kind::Heartbeat(_)) | None => {}
                }
            }
            _ = ticker.tick() => {
                let beat = AgentMessage { kind: Some(agent_message::Kind::Heartbeat(AgentHeartbeat {})) };
                if outbound.send(beat).await.is_err() {
                    return lost(ready, "session request stream closed");
                }
            }
            _ = tokio::time::sleep_until(silent_until) => {
                return lost(ready, "no heartbeat from the manager");
            }
        }
    }
}

fn accepted_message(task_id: &str) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::TaskAccepted(TaskAccepted {
            task_id: task_id.to_owned(),
        })),
    }
}

/// Runs the handler and reports the result on whatever session is live
/// when it finishes (the report is kept until the manager acknowledges
/// it). The task is accepted (see `Ledger::accept`) only if the handler
/// does not finish on its first poll.
fn spawn_task<H: TaskHandler>(handler: &Arc<H>, ledger: &Ledger, task: IncomingTask) {
    let handler = handler.clone();
    let ledger = ledger.clone();
    // The task's span continues the dispatcher's trace (W3C context carried
    // in the task message).
    let span = tracing::info_span!(
        "task",
        task_id = %task.task_id,
        attempt = task.attempt,
        trace_id = tracing::field::Empty,
    );
    shepherd_telemetry::propagation::adopt_from_map(&span, &task.trace_context);
    tokio::spawn(
        async move {
            let task_id = task.task_id.clone();
            let mut run = std::pin::pin!(handler.handle(task));
            // One poll with this task's own context: a handler that has to
            // wait is woken as usual.
            let first = std::future::poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await;
            let result = match first {
                Poll::Ready(result) => result,
                Poll::Pending => {
                    ledger.accept(&task_id).await;
                    run.await
                }
            };
            let (report, session) = ledger.finish(&task_id, result);
            if let Some(session) = session {
                let _ = session.send(report).await;
            }
        }
        .instrument(span),
    );
}

fn end_for(status: tonic::Status, was_ready: bool) -> SessionEnd {
    match status.code() {
        Code::Unauthenticated => SessionEnd::Refused(status.message().to_owned()),
        _ => lost(
            was_ready,
            &format!("{}: {}", status.code(), status.message()),
        ),
    }
}

fn lost(was_ready: bool, reason: &str) -> SessionEnd {
    SessionEnd::Lost {
        was_ready,
        reason: reason.to_owned(),
    }
}
