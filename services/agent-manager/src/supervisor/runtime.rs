//! How an agent's generations run, behind one trait: a process tree in a
//! container on this node, a Pod through the Kubernetes API, or nothing of
//! the manager's (an external agent connects by itself). The supervisor
//! asks its agent's runtime to start a generation and, at manager
//! start-up, to clear what an earlier manager left; it never asks which
//! runtime it holds. (What differs in the decisions, such as asking an
//! external agent to exit instead of terminating it, is `decide`'s.)

use super::Context;
use crate::model::{AgentRecord, Runtime};
use crate::process::{AgentProcess, Launch, kill_orphan};
use crate::workload::Workload;

#[tonic::async_trait]
pub(super) trait AgentRuntime: Send + Sync {
    /// Starts the generation `launch` describes; the error says why not,
    /// for the agent's status.
    async fn start(
        &self,
        ctx: &Context,
        agent: &AgentRecord,
        launch: &Launch<'_>,
    ) -> Result<Workload, String>;

    /// Manager start-up, nothing adopted: nothing an earlier manager
    /// started for `agent` may still run. `started_at`: the start time
    /// recorded with its pid.
    async fn clear_leftovers(&self, ctx: &Context, agent: &AgentRecord, started_at: Option<i64>);
}

/// The runtime an agent's spec names.
pub(super) fn of(runtime: Runtime) -> &'static dyn AgentRuntime {
    match runtime {
        Runtime::Process => &Processes,
        Runtime::Kubernetes => &Pods,
        Runtime::External => &External,
    }
}

/// A process tree in the agent's container on this node.
struct Processes;

#[tonic::async_trait]
impl AgentRuntime for Processes {
    async fn start(
        &self,
        ctx: &Context,
        agent: &AgentRecord,
        launch: &Launch<'_>,
    ) -> Result<Workload, String> {
        let started = std::time::Instant::now();
        let cell = ctx
            .containment
            .prepare(agent.id, &agent.name, agent.spec.limits)
            .await
            .map_err(|err| format!("its container could not be prepared: {err}"))?;
        let prepared = started.elapsed();
        let spawned = AgentProcess::spawn(launch, &ctx.logs, cell)
            .map(Workload::Process)
            .map_err(|err| err.to_string());
        tracing::debug!(agent = %agent.id, prepare_micros = prepared.as_micros() as u64, spawn_micros = (started.elapsed() - prepared).as_micros() as u64, "launched");
        spawned
    }

    async fn clear_leftovers(&self, ctx: &Context, agent: &AgentRecord, started_at: Option<i64>) {
        if let Some(pid) = agent.pid
            && kill_orphan(pid, agent.id, started_at)
        {
            tracing::info!(agent = %agent.id, pid, "killed a process left by a previous manager");
        }
        // And whatever else of its tree is left (escaped children too).
        ctx.containment
            .cell(agent.id)
            .clear(agent.pid.unwrap_or(0))
            .await;
    }
}

/// A Pod per generation (experimental).
struct Pods;

#[tonic::async_trait]
impl AgentRuntime for Pods {
    async fn start(
        &self,
        ctx: &Context,
        _agent: &AgentRecord,
        launch: &Launch<'_>,
    ) -> Result<Workload, String> {
        let kubernetes = ctx.kubernetes.as_ref().ok_or_else(|| {
            "this manager has no Kubernetes API configured (KUBERNETES_API_URL)".to_owned()
        })?;
        kubernetes
            .launch(launch)
            .await
            .map(Workload::Pod)
            .map_err(|err| err.to_string())
    }

    /// Pods of earlier generations are deleted (not adopted, yet). A
    /// failure is logged: the launch that follows does not depend on it.
    async fn clear_leftovers(&self, ctx: &Context, agent: &AgentRecord, _started_at: Option<i64>) {
        let Some(kubernetes) = &ctx.kubernetes else {
            return;
        };
        match kubernetes.delete_agent_pods(agent.id).await {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::info!(agent = %agent.id, deleted, "deleted Pods a previous manager left")
            }
            Err(err) => {
                tracing::warn!(agent = %agent.id, error = %err, "could not delete the agent's old Pods")
            }
        }
    }
}

/// Something else runs the agent; it connects with its credential.
struct External;

#[tonic::async_trait]
impl AgentRuntime for External {
    async fn start(
        &self,
        _ctx: &Context,
        _agent: &AgentRecord,
        _launch: &Launch<'_>,
    ) -> Result<Workload, String> {
        Err("an external agent is started by its own supervisor, not the manager".to_owned())
    }

    async fn clear_leftovers(
        &self,
        _ctx: &Context,
        _agent: &AgentRecord,
        _started_at: Option<i64>,
    ) {
    }
}
