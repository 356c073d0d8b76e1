//! SQL of agents: creating and reading them, and every write of an agent's
//! row, fenced by this node (see `fenced`). A write that has an event
//! (`AgentChange`) goes through the event log's writer, which stores it and
//! its event in one transaction (`Store::commit_log_batch`).

use shepherd_platform::columns::{to_i64, to_json};
use shepherd_platform::db::GenericClient;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::agent_row::{AGENT_COLUMNS, agent_from_row};
use super::nodes::{Fence, fenced, moved};
use super::{AgentFilter, LaunchedProcess, ProcessIdentity, Store};
use crate::error::{Error, Result};
use crate::model::NewAgent;
use crate::model::{AgentRecord, AgentStatus, DesiredState, ExitReason};

/// One write of an agent's row by its supervisor, fenced by this node: it
/// applies only while the agent is this node's and this node holds its
/// term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChange {
    /// The observed status; `pid: None` clears the pid (no process).
    Status {
        status: AgentStatus,
        message: String,
        pid: Option<i32>,
    },
    /// A newly launched generation, STARTING: its process (None: a Pod)
    /// and the hash of its session token.
    Launch {
        generation: u64,
        process: Option<ProcessIdentity>,
        token_hash: Vec<u8>,
    },
    /// The process ended: EXITED, with why.
    Exit { message: String, reason: ExitReason },
    /// A new instance of an external agent connected: the next generation,
    /// supervised by this node.
    Instance { instance: String },
    /// The agent is gone.
    Delete,
}

impl Store {
    /// Stores a new agent (an external one with the hash of its credential).
    pub async fn insert_agent(
        &self,
        agent: &NewAgent,
        credential_hash: Option<&[u8]>,
    ) -> Result<AgentRecord> {
        let client = self.pool.get().await?;
        let spec = to_json(&agent.spec)?;
        let labels = to_json(&agent.labels)?;
        let id = Uuid::now_v7();
        let sql = format!(
            "INSERT INTO agent_manager.agents
                 (id, name, spec, labels, desired_state, status, credential_hash, node)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7) RETURNING {AGENT_COLUMNS}"
        );
        let result = client
            .query_one(
                &client.prepare_cached(&sql).await?,
                &[
                    &id,
                    &agent.name,
                    &spec,
                    &labels,
                    &agent.desired_state.as_str(),
                    &credential_hash,
                    &self.fence.name,
                ],
            )
            .await;
        match result {
            Ok(row) => agent_from_row(&row),
            Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(Error::already_exists(format!(
                    "an agent named {:?} already exists; pick another name",
                    agent.name
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    pub async fn get_agent(&self, id: Uuid) -> Result<Option<AgentRecord>> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agent_manager.agents WHERE id = $1");
        client
            .query_opt(&client.prepare_cached(&sql).await?, &[&id])
            .await?
            .map(|row| agent_from_row(&row))
            .transpose()
    }

    pub async fn list_agents(&self, filter: &AgentFilter, limit: i64) -> Result<Vec<AgentRecord>> {
        let client = self.pool.get().await?;
        let status = filter.status.map(AgentStatus::as_str);
        let labels = to_json(&filter.labels)?;
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agent_manager.agents
             WHERE ($1::text IS NULL OR status = $1)
               AND labels @> $2
               AND ($3::uuid IS NULL OR id > $3)
             ORDER BY id LIMIT $4"
        );
        client
            .query(
                &client.prepare_cached(&sql).await?,
                &[&status, &labels, &filter.after, &limit],
            )
            .await?
            .iter()
            .map(agent_from_row)
            .collect()
    }

    pub async fn all_agents(&self) -> Result<Vec<AgentRecord>> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agent_manager.agents ORDER BY id");
        client
            .query(&client.prepare_cached(&sql).await?, &[])
            .await?
            .iter()
            .map(agent_from_row)
            .collect()
    }

    pub async fn set_desired_state(&self, id: Uuid, desired: DesiredState) -> Result<AgentRecord> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE agent_manager.agents SET desired_state = $2, updated_at = now()
             WHERE id = $1 AND {} RETURNING {AGENT_COLUMNS}",
            fenced(3, 4)
        );
        let row = client
            .query_opt(
                &client.prepare_cached(&sql).await?,
                &[&id, &desired.as_str(), &self.fence.name, &self.fence.term],
            )
            .await?
            .ok_or_else(|| moved(id))?;
        agent_from_row(&row)
    }

    /// An external agent's credential hash (None: not external, or gone).
    pub async fn credential_hash(&self, id: Uuid) -> Result<Option<Vec<u8>>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT credential_hash FROM agent_manager.agents WHERE id = $1",
                    )
                    .await?,
                &[&id],
            )
            .await?;
        Ok(row.and_then(|row| row.get(0)))
    }

    pub async fn set_credential_hash(&self, id: Uuid, hash: &[u8]) -> Result<AgentRecord> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE agent_manager.agents SET credential_hash = $2, updated_at = now()
             WHERE id = $1 RETURNING {AGENT_COLUMNS}"
        );
        let row = client
            .query_opt(&client.prepare_cached(&sql).await?, &[&id, &hash])
            .await?
            .ok_or_else(|| Error::AgentNotFound(id))?;
        agent_from_row(&row)
    }

    /// The process a previous manager launched for the agent, if one was
    /// recorded: what a restarted manager needs to adopt it.
    pub async fn launched_process(&self, id: Uuid) -> Result<Option<LaunchedProcess>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT pid, pid_started_at, session_token_hash FROM agent_manager.agents
                         WHERE id = $1 AND pid IS NOT NULL AND pid_started_at IS NOT NULL
                           AND session_token_hash IS NOT NULL",
                    )
                    .await?,
                &[&id],
            )
            .await?;
        Ok(row.map(|row| LaunchedProcess {
            identity: ProcessIdentity {
                pid: row.get(0),
                started_at: row.get(1),
            },
            token_hash: row.get(2),
        }))
    }

    /// Writes `change` on its own (a change with an event goes through the
    /// event log instead: see `EventLog::change`). Fails with NOT_FOUND if
    /// the agent is gone or no longer this node's.
    pub async fn change(&self, id: Uuid, change: &AgentChange) -> Result<AgentRecord> {
        let client = self.pool.get().await?;
        change_agent(&client, &self.fence, id, change)
            .await?
            .ok_or_else(|| moved(id))
    }
}

/// Writes `change` through `client` (a transaction's, for the event log's
/// writer); None if the fence refused it (the agent is gone or no longer
/// this node's). A deleted agent is returned as it was.
pub(super) async fn change_agent(
    client: &impl GenericClient,
    fence: &Fence,
    id: Uuid,
    change: &AgentChange,
) -> Result<Option<AgentRecord>> {
    let row = match change {
        AgentChange::Status {
            status,
            message,
            pid,
        } => {
            let sql = format!(
                "UPDATE agent_manager.agents
                 SET status = $2, status_message = $3, pid = $4, updated_at = now()
                 WHERE id = $1 AND {} RETURNING {AGENT_COLUMNS}",
                fenced(5, 6)
            );
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
                &id,
                &status.as_str(),
                message,
                pid,
                &fence.name,
                &fence.term,
            ];
            client
                .query_opt(&client.prepare_cached(&sql).await?, &params)
                .await?
        }
        AgentChange::Launch {
            generation,
            process,
            token_hash,
        } => {
            let sql = format!(
                "UPDATE agent_manager.agents
                 SET generation = $2, pid = $3, pid_started_at = $4, session_token_hash = $5,
                     status = 'starting', status_message = '', updated_at = now()
                 WHERE id = $1 AND {} RETURNING {AGENT_COLUMNS}",
                fenced(6, 7)
            );
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
                &id,
                &to_i64(*generation),
                &process.map(|p| p.pid),
                &process.map(|p| p.started_at),
                token_hash,
                &fence.name,
                &fence.term,
            ];
            client
                .query_opt(&client.prepare_cached(&sql).await?, &params)
                .await?
        }
        AgentChange::Exit { message, reason } => {
            let sql = format!(
                "UPDATE agent_manager.agents
                 SET status = 'exited', status_message = $2, pid = NULL, exit_reason = $3,
                     updated_at = now()
                 WHERE id = $1 AND {} RETURNING {AGENT_COLUMNS}",
                fenced(4, 5)
            );
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&id, message, &reason.as_str(), &fence.name, &fence.term];
            client
                .query_opt(&client.prepare_cached(&sql).await?, &params)
                .await?
        }
        AgentChange::Instance { instance } => {
            // Not fenced by `node`: a new instance may connect to any node,
            // which then supervises it (if it holds its term).
            let sql = format!(
                "UPDATE agent_manager.agents
                 SET generation = generation + 1, instance_id = $2, pid = NULL, node = $3,
                     updated_at = now()
                 WHERE id = $1
                   AND EXISTS (SELECT 1 FROM agent_manager.nodes WHERE name = $3 AND term = $4)
                 RETURNING {AGENT_COLUMNS}"
            );
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&id, instance, &fence.name, &fence.term];
            client
                .query_opt(&client.prepare_cached(&sql).await?, &params)
                .await?
        }
        AgentChange::Delete => {
            let sql = format!(
                "DELETE FROM agent_manager.agents WHERE id = $1 AND {} RETURNING {AGENT_COLUMNS}",
                fenced(2, 3)
            );
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&id, &fence.name, &fence.term];
            client
                .query_opt(&client.prepare_cached(&sql).await?, &params)
                .await?
        }
    };
    row.map(|row| agent_from_row(&row)).transpose()
}
