//! What a claim is asked (`ClaimRequest`) and how a claimed task is read
//! back: shared by the plain and the keyed claims.

use shepherd_platform::columns::{from_i32, from_millis};
use uuid::Uuid;

use super::Claimed;

/// A runner's claim: its workflow and the lease it holds.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub workflow: Uuid,
    pub owner: String,
    pub term: i64,
}

/// A claimed task as the claim statements return it: its workflow, its
/// sequence (creation order) and what dispatch needs.
pub(super) fn claimed_from_row(row: &tokio_postgres::Row) -> (Uuid, i64, Claimed) {
    let task = Claimed {
        id: row.get(2),
        prompt: row.get(3),
        attempts: from_i32(row.get(4)),
        trace_context: serde_json::from_value(row.get(5)).unwrap_or_default(),
        script: row.get(6),
        fields: serde_json::from_value(row.get(7)).unwrap_or_default(),
        workflow_name: row.get(8),
        timeout: from_millis(row.get(9)),
        tool_policy: serde_json::from_value(row.get(10)).unwrap_or_default(),
    };
    (row.get(0), row.get(1), task)
}
