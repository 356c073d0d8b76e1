//! Result chaining in the store: the children of tasks that just reached a
//! final state are inserted in the transaction that records the parents'
//! outcomes, keyed by the parent's task id. A crash before the commit
//! loses both (the outcome is learned again, and the child made then); a
//! crash after it keeps both; a second recording finds the child's key.

use uuid::Uuid;

use shepherd_platform::columns::{from_json, to_json, to_millis};
use shepherd_platform::db::Transaction;

use super::{WORKFLOW_COLUMNS, workflow_from_row};
use crate::error::Result;
use crate::model::{
    MAX_CHAIN_DEPTH, MAX_PARENT_OUTPUT_CHARS, TaskFields, TaskState, Trigger, Workflow,
};

/// A task that has just reached a final state, as its children need it.
pub(super) struct Finished {
    pub task_id: String,
    pub workflow_id: Uuid,
    pub state: TaskState,
    pub output: String,
    pub fields: TaskFields,
    pub depth: u32,
}

/// A row of a completion that reached a final state, for chaining (None
/// for one that goes back to pending for a retry).
pub(super) fn finished_from_row(row: &tokio_postgres::Row) -> Result<Option<Finished>> {
    let Some(state) = TaskState::parse(row.get("final_state")).filter(|s| s.is_final()) else {
        return Ok(None);
    };
    Ok(Some(Finished {
        task_id: row.get("id"),
        workflow_id: row.get("workflow_id"),
        state,
        output: row.get("output"),
        fields: from_json(row.get("fields"))?,
        depth: u32::try_from(row.get::<_, i32>("chain_depth")).unwrap_or(0),
    }))
}

/// The SQL fragment telling whether a task's workflow has chain children
/// (`t` names the task); callers skip the lookup when none has.
pub(super) const HAS_CHILDREN: &str = "EXISTS (SELECT 1 FROM scheduler.workflows c
     WHERE c.trigger->>'kind' = 'chain' AND c.trigger->>'parent' = t.workflow_id::text)";

/// Inserts the child of each finished task for each enabled workflow that
/// chains on its outcome, in `tx`.
pub(super) async fn insert_children(tx: &Transaction<'_>, finished: &[Finished]) -> Result<()> {
    if finished.is_empty() {
        return Ok(());
    }
    let parents: Vec<String> = finished.iter().map(|f| f.workflow_id.to_string()).collect();
    let sql = format!(
        "SELECT {WORKFLOW_COLUMNS} FROM scheduler.workflows
         WHERE enabled AND trigger->>'kind' = 'chain' AND trigger->>'parent' = ANY($1)"
    );
    let children: Vec<Workflow> = tx
        .query(&tx.prepare_cached(&sql).await?, &[&parents])
        .await?
        .iter()
        .map(workflow_from_row)
        .collect::<Result<_>>()?;
    for parent in finished {
        for child in &children {
            let Trigger::Chain { parent: of, on } = &child.trigger else {
                continue;
            };
            if *of == parent.workflow_id && on.follows(parent.state) {
                insert_child(tx, parent, child).await?;
            }
        }
    }
    Ok(())
}

async fn insert_child(tx: &Transaction<'_>, parent: &Finished, child: &Workflow) -> Result<()> {
    let key = chain_key(&parent.task_id);
    let id = crate::model::task_id(child.id, &key);
    let depth = parent.depth + 1;
    let fields = child_fields(parent);
    let rendered = crate::template::render_task(child, &fields, None)?;
    // Past the depth limit the child is recorded, failed with the reason,
    // and never runs: the chain stops where anyone can see why.
    let (state, error) = if depth > MAX_CHAIN_DEPTH {
        (
            "failed",
            format!(
                "not run: the chain is {depth} tasks deep, past the limit of {MAX_CHAIN_DEPTH} (a workflow chained on itself stops here)"
            ),
        )
    } else {
        ("pending", String::new())
    };
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO scheduler.tasks (id, workflow_id, idempotency_key, state, fields, prompt,
                 trace_context, script, timeout_ms, tool_policy, parent_task_id, chain_depth, last_error)
             VALUES ($1, $2, $3, $4, $5, $6, '{}', $7, $8, $9, $10, $11, $12)
             ON CONFLICT (id) DO NOTHING",
        )
        .await?,
        &[
            &id,
            &child.id,
            &key,
            &state,
            &to_json(&fields)?,
            &rendered.prompt,
            &rendered.script,
            &to_millis(rendered.timeout),
            &to_json(&rendered.tool_policy)?,
            &parent.task_id,
            &i32::try_from(depth).unwrap_or(i32::MAX),
            &error,
        ],
    )
    .await?;
    Ok(())
}

/// The child's idempotency key: derived from the parent's task id alone
/// (a digest, since task ids embed their keys and a cycle would otherwise
/// grow them without bound); the full id is kept in `parent_task_id`.
fn chain_key(parent_task_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(parent_task_id.as_bytes());
    format!("chain:{}", shepherd_platform::auth::hex(&digest[..16]))
}

/// The parent's fields, and the parent itself under `parent.*` in the
/// metadata (replacing its own parent's).
fn child_fields(parent: &Finished) -> TaskFields {
    let mut fields = parent.fields.clone();
    fields.metadata.retain(|key, _| !key.starts_with("parent."));
    // Trailing newlines dropped, as a shell's $(...) would.
    let output: String = parent
        .output
        .trim_end_matches(['\n', '\r'])
        .chars()
        .take(MAX_PARENT_OUTPUT_CHARS)
        .collect();
    for (key, value) in [
        ("parent.output", output),
        ("parent.outcome", parent.state.as_str().to_owned()),
        ("parent.task_id", parent.task_id.clone()),
        ("parent.workflow_id", parent.workflow_id.to_string()),
        ("parent.title", parent.fields.title.clone()),
        ("parent.body", parent.fields.body.clone()),
        ("parent.url", parent.fields.url.clone()),
    ] {
        fields.metadata.insert(key.to_owned(), value);
    }
    fields
}
