//! An agent's row as the queries read it: its columns and its decoding.

use shepherd_platform::columns::{from_i64, from_json};
use tokio_postgres::Row;

use crate::error::{Error, Result};
use crate::model::{AgentRecord, AgentSpec, AgentStatus, DesiredState, ExitReason};

pub(super) const AGENT_COLUMNS: &str = "id, name, spec, labels, desired_state, status, status_message, \
                             generation, pid, exit_reason, instance_id, node, created_at, updated_at";

pub(super) fn agent_from_row(row: &Row) -> Result<AgentRecord> {
    let spec: serde_json::Value = row.get("spec");
    let labels: serde_json::Value = row.get("labels");
    let desired: &str = row.get("desired_state");
    let status: &str = row.get("status");
    Ok(AgentRecord {
        id: row.get("id"),
        name: row.get("name"),
        spec: from_json::<AgentSpec>(spec)?,
        labels: from_json(labels)?,
        desired_state: DesiredState::parse(desired)
            .ok_or_else(|| Error::internal(format!("unknown desired state {desired:?}")))?,
        status: AgentStatus::parse(status)
            .ok_or_else(|| Error::internal(format!("unknown status {status:?}")))?,
        status_message: row.get("status_message"),
        generation: from_i64(row.get("generation")),
        pid: row.get("pid"),
        exit_reason: row
            .get::<_, Option<&str>>("exit_reason")
            .and_then(ExitReason::parse),
        instance: row.get("instance_id"),
        node: row.get("node"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}
