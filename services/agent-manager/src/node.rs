//! This manager as one node of several sharing a database.
//!
//! Every agent is supervised by exactly one node at a time, the one its
//! row names: a process agent by the node that launches it, an external
//! agent by the node its session is on. Writes about an agent are fenced by
//! the node's name and term (`store::nodes`), so a node that lost an agent,
//! or a stale process of a node that joined again, cannot change it.
//!
//! The node renews its lease every third of the TTL, and on the same tick:
//! - lets go of agents the database says another node supervises now (an
//!   external agent whose new session landed elsewhere, a process agent
//!   started elsewhere while this node was gone);
//! - declares the agents of nodes whose lease expired LOST, with their
//!   tasks in flight (any live node may do it; each transition happens
//!   once);
//! - after its own lease lapsed and came back, shows its agents as they
//!   are again (peers may have declared them LOST meanwhile).
//!
//! A node whose term was taken (another process joined under its name)
//! stops serving: the newer one owns its agents.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::events::{Event, EventLog};
use crate::store::{Renewal, Store};
use crate::supervisor::{Supervisors, report_lost};

pub(crate) struct NodeLease {
    pub store: Store,
    pub events: EventLog,
    pub supervisors: Arc<Supervisors>,
    pub ttl: Duration,
}

impl NodeLease {
    /// Renews until `shutdown`; cancels `shutdown` itself when fenced out.
    pub(crate) async fn keep(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.ttl / 3);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match self.store.renew_lease(self.ttl).await {
                Ok(Renewal::Fenced) => {
                    tracing::error!(
                        node = %self.store.fence().name,
                        "another agent-manager joined under this node name; this one stops (its agents are the newer one's)"
                    );
                    shutdown.cancel();
                    return;
                }
                Ok(Renewal::Renewed { lapsed }) => {
                    if lapsed {
                        tracing::warn!(node = %self.store.fence().name, "this node's lease had lapsed; showing its agents as they are again");
                        self.supervisors.refresh_all().await;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not renew this node's lease");
                    continue;
                }
            }
            if let Err(err) = self.let_go_of_moved_agents().await {
                tracing::warn!(error = %err, "could not check which agents this node supervises");
            }
            if let Err(err) = self.orphan_expired_nodes_agents().await {
                tracing::warn!(error = %err, "could not check for expired manager nodes");
            }
        }
    }

    /// Retires the supervisors of agents the database no longer gives this
    /// node. The ids are read before the rows, so an agent claimed in
    /// between is in the rows and kept; each supervisor checks again
    /// before it lets go.
    async fn let_go_of_moved_agents(&self) -> Result<()> {
        let supervised = self.supervisors.ids();
        let own: std::collections::HashSet<uuid::Uuid> =
            self.store.own_agent_ids().await?.into_iter().collect();
        for id in supervised.into_iter().filter(|id| !own.contains(id)) {
            self.supervisors.retire(id).await;
        }
        Ok(())
    }

    async fn orphan_expired_nodes_agents(&self) -> Result<()> {
        let (orphaned, lost) = self.store.orphan_expired_nodes_agents().await?;
        for agent in &orphaned {
            tracing::warn!(agent = %agent.agent_id, node = %agent.node, "manager node's lease expired; its agent is lost");
            self.events
                .append(
                    agent.agent_id,
                    agent.generation,
                    Event::Disconnected {
                        reason: format!(
                            "its manager node {} stopped renewing its lease",
                            agent.node
                        ),
                    },
                )
                .await?;
        }
        report_lost(
            &self.events,
            lost,
            "its manager node stopped renewing its lease",
        )
        .await
    }
}
