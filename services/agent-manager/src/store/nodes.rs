//! SQL of manager nodes: joining, renewing the lease, where each agent is
//! supervised, and declaring the agents of a node whose lease expired lost.

use std::time::Duration;

use shepherd_platform::db::DbPool;
use uuid::Uuid;

use super::agent_row::{AGENT_COLUMNS, agent_from_row};
use super::tasks::lost_from_row;
use super::{LostTask, Store};
use crate::error::{Error, Result};
use crate::model::AgentRecord;

/// This manager as a node: its name and the term it joined with. Every
/// write about an agent checks both (see `Store::fenced`).
#[derive(Debug, Clone)]
pub struct Fence {
    pub name: String,
    pub term: i64,
}

/// A node as stored.
#[derive(Debug, Clone)]
pub struct NodeRecord {
    pub name: String,
    pub url: String,
    pub term: i64,
    pub live: bool,
    pub lease_expires: std::time::SystemTime,
}

/// Where an agent is supervised, as the database says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// No node, or one whose lease expired.
    Unheld,
    /// A live node (possibly this one).
    Node { name: String, url: String },
}

/// An agent of a node whose lease expired, just marked lost.
#[derive(Debug, Clone)]
pub struct Orphaned {
    pub agent_id: Uuid,
    pub generation: u64,
    pub node: String,
}

/// The predicate of a fenced write on `agent_manager.agents`: the row is
/// this node's and this node still holds its term. `$name` and `$term` are
/// the placeholders of `Fence::name` and `Fence::term`.
pub(super) fn fenced(name: usize, term: usize) -> String {
    format!(
        "node = ${name} AND EXISTS (SELECT 1 FROM agent_manager.nodes
                                    WHERE name = ${name} AND term = ${term})"
    )
}

/// Joins as node `name` (a new term: a process that held the name before
/// is fenced out from now on) and takes the lease.
pub(crate) async fn join(pool: &DbPool, name: &str, url: &str, ttl: Duration) -> Result<Fence> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            &client
                .prepare_cached(
                    "INSERT INTO agent_manager.nodes (name, term, url, lease_expires)
                     VALUES ($1, 1, $2, now() + $3::float8 * interval '1 millisecond')
                     ON CONFLICT (name) DO UPDATE
                     SET term = nodes.term + 1, url = EXCLUDED.url,
                         lease_expires = EXCLUDED.lease_expires, joined_at = now()
                     RETURNING term",
                )
                .await?,
            &[&name, &url, &millis(ttl)],
        )
        .await?;
    Ok(Fence {
        name: name.to_owned(),
        term: row.get(0),
    })
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed; `lapsed` if the lease had expired meanwhile (peers may have
    /// declared this node's agents lost).
    Renewed { lapsed: bool },
    /// Another process joined under this name: this one is fenced out.
    Fenced,
}

impl Store {
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Extends this node's lease by `ttl` from now.
    pub async fn renew_lease(&self, ttl: Duration) -> Result<Renewal> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "UPDATE agent_manager.nodes n
                         SET lease_expires = now() + $3::float8 * interval '1 millisecond'
                         FROM (SELECT lease_expires FROM agent_manager.nodes
                               WHERE name = $1 FOR UPDATE) AS before
                         WHERE n.name = $1 AND n.term = $2
                         RETURNING before.lease_expires < now()",
                    )
                    .await?,
                &[&self.fence.name, &self.fence.term, &millis(ttl)],
            )
            .await?;
        Ok(match row {
            Some(row) => Renewal::Renewed { lapsed: row.get(0) },
            None => Renewal::Fenced,
        })
    }

    /// Every node, live or not.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT name, url, term, lease_expires > now(), lease_expires
                         FROM agent_manager.nodes ORDER BY name",
                    )
                    .await?,
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| NodeRecord {
                name: row.get(0),
                url: row.get(1),
                term: row.get(2),
                live: row.get(3),
                lease_expires: row.get(4),
            })
            .collect())
    }

    /// Where the agent is supervised now.
    pub async fn placement(&self, id: Uuid) -> Result<Placement> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT n.name, n.url FROM agent_manager.agents a
                         LEFT JOIN agent_manager.nodes n
                           ON n.name = a.node AND n.lease_expires > now()
                         WHERE a.id = $1",
                    )
                    .await?,
                &[&id],
            )
            .await?
            .ok_or_else(|| Error::AgentNotFound(id))?;
        Ok(match (row.get(0), row.get(1)) {
            (Some(name), Some(url)) => Placement::Node { name, url },
            _ => Placement::Unheld,
        })
    }

    /// Of these in-flight tasks, the ones whose agent another live node
    /// supervises, by that node's URL: only it knows whether their session
    /// is live.
    pub async fn tasks_held_elsewhere(&self, task_ids: &[String]) -> Result<Vec<(String, String)>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT t.task_id, n.url FROM agent_manager.tasks t
                         JOIN agent_manager.agents a ON a.id = t.agent_id
                         JOIN agent_manager.nodes n
                           ON n.name = a.node AND n.lease_expires > now()
                         WHERE t.task_id = ANY($1) AND t.state IN ('delivered', 'accepted')
                           AND a.node <> $2",
                    )
                    .await?,
                &[&task_ids, &self.fence.name],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Takes over supervision of an agent nobody (alive) supervises, or
    /// that this node already does. None: a live node holds it.
    pub async fn claim_agent(&self, id: Uuid) -> Result<Option<AgentRecord>> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE agent_manager.agents a SET node = $2, updated_at = now()
             WHERE a.id = $1
               AND EXISTS (SELECT 1 FROM agent_manager.nodes WHERE name = $2 AND term = $3)
               AND (a.node IS NULL OR a.node = $2 OR NOT EXISTS (
                      SELECT 1 FROM agent_manager.nodes n
                      WHERE n.name = a.node AND n.lease_expires > now()))
             RETURNING {AGENT_COLUMNS}"
        );
        let row = client
            .query_opt(
                &client.prepare_cached(&sql).await?,
                &[&id, &self.fence.name, &self.fence.term],
            )
            .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    /// Start-up: process agents nobody supervises become this node's
    /// (agents from before nodes existed); returns every agent this node
    /// supervises.
    pub async fn claim_own_agents(&self) -> Result<Vec<AgentRecord>> {
        let client = self.pool.get().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE agent_manager.agents SET node = $1
                         WHERE node IS NULL
                           AND coalesce(spec->>'runtime', 'process') = 'process'",
                    )
                    .await?,
                &[&self.fence.name],
            )
            .await?;
        self.own_agents().await
    }

    /// The ids of the agents this node supervises (the lease tick's check:
    /// ids only, not whole rows, every third of the TTL).
    pub(crate) async fn own_agent_ids(&self) -> Result<Vec<Uuid>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached("SELECT id FROM agent_manager.agents WHERE node = $1")
                    .await?,
                &[&self.fence.name],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// The agents this node supervises, by the database.
    pub async fn own_agents(&self) -> Result<Vec<AgentRecord>> {
        let client = self.pool.get().await?;
        let sql =
            format!("SELECT {AGENT_COLUMNS} FROM agent_manager.agents WHERE node = $1 ORDER BY id");
        client
            .query(&client.prepare_cached(&sql).await?, &[&self.fence.name])
            .await?
            .iter()
            .map(agent_from_row)
            .collect()
    }

    /// The agents of nodes whose lease expired and that still show as
    /// running become LOST, and their tasks in flight lost, in one
    /// transaction: every transition is returned exactly once, whichever
    /// node (or how many at once) runs this.
    pub async fn orphan_expired_nodes_agents(&self) -> Result<(Vec<Orphaned>, Vec<LostTask>)> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let orphaned: Vec<Orphaned> = tx
            .query(
                "UPDATE agent_manager.agents a
                 SET status = 'lost', updated_at = now(),
                     status_message = 'its node ' || a.node || ' stopped renewing its lease; '
                       || CASE WHEN coalesce(a.spec->>'runtime', 'process') = 'process'
                               THEN 'what runs there is unknown until the node is back'
                               ELSE 'waiting for it to connect to another manager' END
                 FROM agent_manager.nodes n
                 WHERE n.name = a.node AND n.lease_expires < now()
                   AND a.status IN ('starting', 'ready')
                 RETURNING a.id, a.generation, a.node",
                &[],
            )
            .await?
            .iter()
            .map(|row| Orphaned {
                agent_id: row.get(0),
                generation: shepherd_platform::columns::from_i64(row.get(1)),
                node: row.get(2),
            })
            .collect();
        let ids: Vec<Uuid> = orphaned.iter().map(|agent| agent.agent_id).collect();
        let lost = tx
            .query(
                "UPDATE agent_manager.tasks SET state = 'lost', updated_at = now()
                 WHERE agent_id = ANY($1) AND state IN ('delivered', 'accepted')
                 RETURNING task_id, agent_id, generation, attempt",
                &[&ids],
            )
            .await?
            .iter()
            .map(lost_from_row)
            .collect();
        tx.commit().await?;
        Ok((orphaned, lost))
    }
}

/// A fenced write found no row: deleted, or no longer this node's.
pub(crate) fn moved(id: Uuid) -> Error {
    Error::not_found(format!(
        "agent {id} not found on this manager node (deleted, or supervised by another node now)"
    ))
}
