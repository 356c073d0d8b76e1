//! The agent SDK: everything an agent process needs to take work from
//! Shepherd.
//!
//! An agent is started by the agent-manager with `SHEPHERD_AGENT_ID`,
//! `SHEPHERD_SESSION_TOKEN` and `SHEPHERD_MANAGER_URL` in its environment.
//! [`run`] opens the session (`AgentSession.Connect`), which makes the agent
//! READY; then it receives tasks, hands each to your [`TaskHandler`]
//! (concurrently), and reports accepted / completed. It heartbeats, detects
//! a silent manager, and reconnects with backoff when the connection drops.
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
use std::sync::Arc;
use std::time::Duration;

use shepherd_proto::agentmanager::v1::{
    AgentHeartbeat, AgentMessage, Hello, TaskAccepted, TaskCompleted, agent_message,
    agent_session_client::AgentSessionClient, manager_message,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::Instrument;

pub use shepherd_proto::agentmanager::v1::TaskOutcome;

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error(
        "environment variable {0} is not set; agents are started by the agent-manager, which sets it"
    )]
    MissingEnv(&'static str),
    #[error("invalid manager URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The manager refused the session token: this process belongs to an
    /// earlier generation (or the token is wrong). Retrying cannot help.
    #[error("the agent-manager refused the session: {0}")]
    Refused(String),
}

/// Where to connect and how to authenticate.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub agent_id: String,
    pub session_token: String,
    pub manager_url: String,
    /// PEM CA to verify the manager's TLS certificate (https URLs).
    pub manager_ca_file: Option<std::path::PathBuf>,
}

impl AgentConfig {
    pub fn from_env() -> Result<Self, SdkError> {
        let var = |name: &'static str| std::env::var(name).map_err(|_| SdkError::MissingEnv(name));
        Ok(Self {
            agent_id: var("SHEPHERD_AGENT_ID")?,
            session_token: var("SHEPHERD_SESSION_TOKEN")?,
            manager_url: var("SHEPHERD_MANAGER_URL")?,
            manager_ca_file: std::env::var_os("SHEPHERD_MANAGER_CA_FILE").map(Into::into),
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
    let mut endpoint = Endpoint::from_shared(config.manager_url.clone())
        .map_err(|err| invalid(err.to_string()))?;
    if let Some(ca) = &config.manager_ca_file {
        let pem = std::fs::read(ca)
            .map_err(|err| invalid(format!("reading CA {}: {err}", ca.display())))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(|err| invalid(err.to_string()))?;
    }
    let channel = endpoint.tcp_nodelay(true).connect_lazy();
    let handler = Arc::new(handler);
    let mut backoff = Duration::from_millis(50);
    loop {
        match session(&config, channel.clone(), handler.clone()).await {
            SessionEnd::Refused(message) => return Err(SdkError::Refused(message)),
            SessionEnd::Lost { was_ready, reason } => {
                if was_ready {
                    backoff = Duration::from_millis(50);
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
    Lost { was_ready: bool, reason: String },
}

/// One session, from hello to its end.
async fn session<H: TaskHandler>(
    config: &AgentConfig,
    channel: Channel,
    handler: Arc<H>,
) -> SessionEnd {
    let (outbound, requests) = mpsc::channel::<AgentMessage>(256);
    let hello = AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: config.agent_id.clone(),
            session_token: config.session_token.clone(),
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
                    }
                    Some(manager_message::Kind::Task(task)) => {
                        spawn_task(&handler, &outbound, IncomingTask {
                            task_id: task.task_id,
                            payload: task.payload,
                            attempt: task.attempt,
                            trace_context: task.trace_context,
                        });
                    }
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

/// Accepts the task, runs the handler, and reports the result.
fn spawn_task<H: TaskHandler>(
    handler: &Arc<H>,
    outbound: &mpsc::Sender<AgentMessage>,
    task: IncomingTask,
) {
    let handler = handler.clone();
    let outbound = outbound.clone();
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
            let attempt = task.attempt;
            let accepted = AgentMessage {
                kind: Some(agent_message::Kind::TaskAccepted(TaskAccepted {
                    task_id: task_id.clone(),
                })),
            };
            if outbound.send(accepted).await.is_err() {
                // The session is gone; the manager counts the task as lost.
                return;
            }
            let result = handler.handle(task).await;
            let completed = AgentMessage {
                kind: Some(agent_message::Kind::TaskCompleted(TaskCompleted {
                    task_id,
                    outcome: result.outcome as i32,
                    output: result.output,
                    attempt,
                })),
            };
            let _ = outbound.send(completed).await;
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
