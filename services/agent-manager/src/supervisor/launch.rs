//! Starting and ending what runs of an agent: the one launch path (a
//! process in its container on this node, or a Pod), termination, the
//! record of an exit, and adoption of a process a previous manager left.

use super::actor::Supervisor;
use super::decide::Pid;
use super::runtime;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::model::{AgentRecord, AgentSpec, AgentStatus, ExitInfo, Runtime};
use crate::process::{AgentProcess, AgentUser, Launch};
use crate::sessions::{hash_token, new_token};
use crate::store::{AgentChange, LaunchedProcess};
use crate::workload::Workload;

impl Supervisor {
    /// The one launch path (see the module docs of `supervisor`).
    pub(super) async fn launch(&mut self, reason: &str) -> Result<AgentRecord> {
        let generation = self.record.generation + 1;
        let token = new_token()
            .map_err(|err| Error::internal(format!("no randomness for a session token: {err}")))?;
        let launch = Launch {
            agent_id: self.id(),
            agent_name: &self.record.name,
            spec: &self.record.spec,
            generation,
            session_token: &token,
            manager_url: &self.ctx.manager_url,
            manager_ca_file: self.ctx.manager_ca_file.as_deref(),
            run_as: match &self.record.spec.run_as_user {
                // Checked at creation; a user removed since fails the launch.
                Some(user) => Some(AgentUser::resolve(user).map_err(Error::failed_precondition)?),
                None => self.ctx.agent_user,
            },
        };
        let spawned = runtime::of(self.record.spec.runtime)
            .start(&self.ctx, &self.record, &launch)
            .await;
        let process = match spawned {
            Ok(process) => process,
            Err(err) => {
                let message = format!(
                    "could not launch {}: {err}",
                    launch_target(&self.record.spec)
                );
                self.set_status(AgentStatus::Failed, &message, Pid::Clear, None)
                    .await?;
                return Err(Error::failed_precondition(message));
            }
        };
        let pid = process.pid().unwrap_or(0);
        let identity = process.identity();
        self.process = Some(process);
        let token_hash = hash_token(&token);
        self.token_hash = Some(token_hash.clone());
        let change = AgentChange::Launch {
            generation,
            process: identity,
            token_hash,
        };
        let reason_owned = reason.to_owned();
        let started =
            move |agent: &AgentRecord| started_events(pid, agent.generation, reason_owned.clone());
        if let Err(err) = self.commit(change, started).await {
            // Without its token stored the process could never connect.
            self.terminate("launch could not be recorded").await?;
            return Err(err);
        }
        if generation > 1 {
            crate::metrics::agent_restarted(self.id(), &self.record.name);
        }
        tracing::info!(agent = %self.id(), generation, pid, reason, "agent process launched");
        Ok(self.record.clone())
    }

    /// Stops the running process, if any, and records its exit.
    pub(super) async fn terminate(&mut self, reason: &str) -> Result<()> {
        let Some(process) = self.process.take() else {
            return Ok(());
        };
        self.token_hash = None;
        self.close_reconnect_window();
        let exit = process.terminate(self.ctx.stop_grace).await;
        self.record_exit(exit, reason).await?;
        self.drop_session(reason).await
    }

    /// The process exited on its own: nothing of its tree may run once its
    /// tasks are reported lost or a new generation starts, so the rest of
    /// it is killed, and its token is void.
    pub(super) async fn clear_process(&mut self) {
        if let Some(process) = self.process.take() {
            process.clear().await;
        }
        self.token_hash = None;
        self.close_reconnect_window();
    }

    pub(super) async fn record_exit(&mut self, exit: ExitInfo, message: &str) -> Result<()> {
        if exit.oom_killed {
            crate::metrics::agent_oom_killed(self.id(), &self.record.name);
        }
        let change = AgentChange::Exit {
            message: message.to_owned(),
            reason: exit.reason(),
        };
        self.commit(change, move |_| {
            vec![Event::Exited {
                code: exit.code,
                signal: exit.signal,
                reason: exit.reason(),
            }]
        })
        .await
    }

    /// Takes over the recorded process (`launched`) if it still runs; true
    /// if it did.
    pub(super) async fn adopt(&mut self, launched: Option<LaunchedProcess>) -> Result<bool> {
        let Some(launched) = launched else {
            return Ok(false);
        };
        let cell = self.ctx.containment.adopted(self.id(), &self.record.name);
        let Some(process) =
            AgentProcess::adopt(launched.identity, self.id(), self.record.generation, cell)
        else {
            return Ok(false);
        };
        let pid = process.pid();
        self.process = Some(Workload::Process(process));
        self.token_hash = Some(launched.token_hash);
        self.expect_reconnect();
        let change = AgentChange::Status {
            status: AgentStatus::Starting,
            message: "adopted after a manager restart; waiting for its session".into(),
            pid: Some(pid),
        };
        self.record = self.ctx.store.change(self.id(), &change).await?;
        tracing::info!(agent = %self.id(), pid, generation = self.record.generation, "adopted a running agent process");
        Ok(true)
    }
}

/// The events of a launched generation: `Started`, and `Restarted` when it
/// follows an earlier one.
pub(super) fn started_events(pid: i32, generation: u64, reason: String) -> Vec<Event> {
    let mut events = vec![Event::Started { pid }];
    if generation > 1 {
        events.push(Event::Restarted { generation, reason });
    }
    events
}

/// What a failed launch tried to start, for its message.
fn launch_target(spec: &AgentSpec) -> String {
    match (&spec.runtime, &spec.image) {
        (Runtime::Kubernetes, Some(image)) => format!("a Pod of image {image:?}"),
        _ => format!("{:?}", spec.command),
    }
}
