//! How a task's own programs ask for approval: the agent listens on a unix
//! socket in a private directory and gives each task its path and a token
//! naming the task (`SHEPHERD_APPROVAL_SOCKET`, `SHEPHERD_APPROVAL_TOKEN`).
//! `shepherd-agent approve` (a coding agent's pre-tool hook) connects,
//! sends one JSON line and waits for one JSON line back: the decision.
//!
//! The token, not a task id, names the task: a program can only ask on
//! behalf of the task that started it, and only while that task runs (its
//! registration ends with it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::approvals::Approver;
use crate::decision::{ApprovalDecision, ApprovalState};

/// Longest request line accepted (tool, input and reason included).
const MAX_LINE: u64 = 64 * 1024;
/// How long a client has to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request, one JSON line.
#[derive(Debug, Serialize, Deserialize)]
pub struct AskLine {
    pub token: String,
    pub tool: String,
    #[serde(default)]
    pub input: String,
    #[serde(default)]
    pub reason: String,
}

/// The answer, one JSON line.
#[derive(Debug, Serialize, Deserialize)]
pub struct AnswerLine {
    pub approved: bool,
    /// "approved", "denied", "expired", "withdrawn".
    pub state: String,
    pub comment: String,
    pub decided_by: String,
    pub approval_id: String,
    /// Nobody was asked: the request is over its bounds.
    #[serde(default)]
    pub cannot_ask: bool,
}

impl AnswerLine {
    fn from_decision(decision: &ApprovalDecision) -> Self {
        let state = match decision.state {
            ApprovalState::Approved => "approved",
            ApprovalState::Expired => "expired",
            ApprovalState::Withdrawn => "withdrawn",
            _ => "denied",
        };
        Self {
            approved: decision.approved(),
            state: state.to_owned(),
            comment: decision.comment.clone(),
            decided_by: decision.decided_by.clone(),
            approval_id: decision.approval_id.clone(),
            cannot_ask: decision.cannot_ask,
        }
    }

    fn refused(why: impl Into<String>) -> Self {
        Self {
            approved: false,
            state: "denied".to_owned(),
            comment: why.into(),
            decided_by: String::new(),
            approval_id: String::new(),
            cannot_ask: false,
        }
    }
}

type Tasks = Arc<Mutex<HashMap<String, Approver>>>;

/// The agent's approval socket; removed (with its directory) on drop.
pub struct ApprovalSocket {
    dir: PathBuf,
    path: PathBuf,
    tasks: Tasks,
    accept: tokio::task::JoinHandle<()>,
}

impl ApprovalSocket {
    /// Listens in a new private (0700) directory under the temp dir
    /// (first removing those of agents that died without removing theirs).
    pub fn bind() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        remove_stale_dirs();
        let dir = std::env::temp_dir().join(format!(
            "shepherd-agent-{}-{}",
            std::process::id(),
            &crate::random_instance_id()[..12]
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("approvals.sock");
        let listener = UnixListener::bind(&path)?;
        let tasks = Tasks::default();
        let accept = tokio::spawn(accept_loop(listener, tasks.clone()));
        Ok(Self {
            dir,
            path,
            tasks,
            accept,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets the task's programs ask through `approver` while the returned
    /// registration lives; its `env()` tells them how.
    pub fn register(&self, approver: Approver) -> Registration {
        let token = crate::random_instance_id();
        lock(&self.tasks).insert(token.clone(), approver);
        Registration {
            token,
            path: self.path.clone(),
            tasks: self.tasks.clone(),
        }
    }
}

impl Drop for ApprovalSocket {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes `shepherd-agent-PID-*` directories of processes that no longer
/// exist (an agent killed with SIGKILL leaves its directory behind).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix("shepherd-agent-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A task's right to ask; ends when dropped.
pub struct Registration {
    token: String,
    path: PathBuf,
    tasks: Tasks,
}

impl Registration {
    /// The variables to give the task's programs.
    pub fn env(&self) -> Vec<(String, String)> {
        use shepherd_proto::task_env;
        vec![
            (
                task_env::APPROVAL_SOCKET.to_owned(),
                self.path.display().to_string(),
            ),
            (task_env::APPROVAL_TOKEN.to_owned(), self.token.clone()),
        ]
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.tasks).remove(&self.token);
    }
}

fn lock(tasks: &Tasks) -> std::sync::MutexGuard<'_, HashMap<String, Approver>> {
    // A map of tokens: no invariant a panicking holder could break.
    tasks.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(listener: UnixListener, tasks: Tasks) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, tasks.clone()));
            }
            Err(err) => {
                tracing::warn!(error = %err, "approval socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers one connection: one request line, one answer line. A client
/// that goes away while waiting drops its request.
async fn serve(stream: UnixStream, tasks: Tasks) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_LINE));
    let mut line = String::new();
    let answer = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 && line.ends_with('\n') => {
            match serde_json::from_str::<AskLine>(&line) {
                Ok(ask) => {
                    let approver = lock(&tasks).get(&ask.token).cloned();
                    match approver {
                        Some(approver) => {
                            let mut rest = reader.into_inner().into_inner();
                            let mut probe = [0u8; 1];
                            tokio::select! {
                                decision = approver.ask(ask.tool, ask.input, ask.reason) => {
                                    AnswerLine::from_decision(&decision)
                                }
                                // The asking program went away: nobody to
                                // answer (the request is forgotten here;
                                // the manager withdraws it with the task).
                                _ = rest.read(&mut probe) => return,
                            }
                        }
                        None => AnswerLine::refused(
                            "SHEPHERD_APPROVAL_TOKEN names no running task of this agent",
                        ),
                    }
                }
                Err(err) => AnswerLine::refused(format!("malformed approval request: {err}")),
            }
        }
        Ok(Ok(_)) => AnswerLine::refused(format!(
            "the approval request must be one JSON line of at most {MAX_LINE} bytes"
        )),
        Ok(Err(err)) => AnswerLine::refused(format!("reading the approval request: {err}")),
        Err(_) => AnswerLine::refused("no approval request within 10 s"),
    };
    if let Ok(mut text) = serde_json::to_string(&answer) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}

/// Asks through the socket at `path` (the client side of
/// `shepherd-agent approve`) and waits for the answer.
pub async fn ask(path: &Path, request: &AskLine) -> std::io::Result<AnswerLine> {
    let stream = UnixStream::connect(path).await?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    let mut reader = BufReader::new(read.take(MAX_LINE));
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the agent closed the approval socket without answering (is it exiting?)",
        ));
    }
    serde_json::from_str(&line).map_err(std::io::Error::other)
}
