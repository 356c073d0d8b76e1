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

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

pub use shepherd_proto::agentmanager::v1::TaskOutcome;

pub mod approval_socket;
mod approvals;
mod budget;
mod config;
mod credential;
mod decision;
mod error;
mod ledger;
mod result;
mod session;
mod task;

pub use approvals::Approver;
pub use budget::{Budget, BudgetSpent};
pub use config::{AgentConfig, DEFAULT_ORPHAN_TIMEOUT};
pub use decision::{ApprovalDecision, ApprovalState};
pub use error::SdkError;
pub use result::TaskResult;
pub use task::{IncomingTask, Progress, TaskHandler, TaskSpec};

use config::random_instance_id;
use ledger::{Ledger, orphan_watchdog};
use session::{SessionEnd, session};

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
