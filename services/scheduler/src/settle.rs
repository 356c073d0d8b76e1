//! Settling tasks in flight: what a dispatch answer means for a task, and
//! the pass that reconciles DISPATCHED tasks with the agent-manager.
//!
//! A task becomes DISPATCHED when a runner claims it, *before* the manager
//! hears of it; a crash between the two, a lost answer, a dropped report or
//! a missed event would otherwise leave it DISPATCHED forever, holding its
//! workflow's concurrency slot. The scheduler owns that state, so it
//! settles it: on every (re)connect of the event stream, on every level
//! pass, after a resync, on every agent restart and whenever a runner takes
//! a workflow's lease, it asks the manager about its in-flight tasks in one
//! batched call and acts on each answer. Delivery is idempotent by task id
//! and attempt, so delivering an attempt the manager never saw again is
//! always safe, even while the original dispatch is still on its way.

use std::collections::BTreeSet;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::manager_client::{
    MAX_TASK_STATES, ManagerClient, ManagerError, OutgoingTask, RemoteTask,
};
use crate::model::TaskEnd;
use crate::store::{InFlight, InFlightScope, Outcome, Store};

/// What became of a task after a dispatch answer was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Delivered and running (or waiting for the agent to take it).
    InFlight,
    /// Finished: its outcome is recorded.
    Finished,
    /// Back to pending (or failed, out of attempts): not delivered, or lost.
    Requeued,
}

/// What a dispatch answer means for our attempt of a task (pure: the
/// decision, apart from the database work that carries it out).
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// In flight; the manager numbers the attempt `attempt` (ours may lag
    /// behind when the manager already held the task).
    InFlight { attempt: u32, align: bool },
    /// Finished, whatever attempt finished it.
    Finished { end: TaskEnd, output: String },
    /// Our attempt (or a later one) was lost: retry under the policy.
    Lost { attempt: u32 },
    /// Not delivered (unknown to the manager, an older attempt lost, or the
    /// call failed): back to pending.
    NotDelivered(String),
}

fn judge(ours: u32, answer: std::result::Result<RemoteTask, ManagerError>) -> Verdict {
    match answer {
        Ok(RemoteTask::InFlight { attempt }) => Verdict::InFlight {
            attempt,
            // A dispatch of a task the manager already holds is not a new
            // attempt: align our count with its.
            align: attempt != ours,
        },
        Ok(RemoteTask::Completed {
            outcome, output, ..
        }) => Verdict::Finished {
            end: outcome,
            output,
        },
        Ok(RemoteTask::Lost { attempt }) if attempt >= ours => Verdict::Lost { attempt },
        Ok(RemoteTask::Lost { .. } | RemoteTask::Unknown) => {
            Verdict::NotDelivered("not delivered".into())
        }
        Err(err) => Verdict::NotDelivered(format!("not delivered: {err}")),
    }
}

/// Records what the manager's answer about attempt `ours` of `task` means
/// for the task. A failed call means it was not delivered, so the task goes
/// back to pending (if it was delivered after all, its next dispatch finds
/// it in flight: delivery is idempotent).
pub(crate) async fn apply(
    store: &Store,
    task: &str,
    ours: u32,
    answer: std::result::Result<RemoteTask, ManagerError>,
) -> Result<Applied> {
    match judge(ours, answer) {
        Verdict::InFlight { attempt, align } => {
            if align {
                store.set_attempts(task, attempt).await?;
            }
            Ok(Applied::InFlight)
        }
        Verdict::Finished { end, output } => {
            let outcome = Outcome {
                task_id: task.to_owned(),
                // Whatever attempt finished it, the task is done.
                attempt: None,
                end,
                output,
            };
            store.complete_many(&[outcome]).await?;
            Ok(Applied::Finished)
        }
        Verdict::Lost { attempt } => {
            store
                .lost(
                    task,
                    Some(attempt),
                    "the agent's session ended before the task finished",
                )
                .await?;
            Ok(Applied::Requeued)
        }
        Verdict::NotDelivered(reason) => {
            tracing::debug!(%task, %reason, "task not delivered");
            store.release(task, &reason).await?;
            Ok(Applied::Requeued)
        }
    }
}

/// What a settle pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SettleReport {
    /// In-flight tasks asked about.
    pub checked: usize,
    /// Attempts the manager never received, delivered now.
    pub redelivered: usize,
    /// Tasks found finished or lost (their outcome recorded, or requeued).
    pub settled: usize,
    /// Workflows whose tasks changed: their runners may claim again.
    pub workflows: BTreeSet<Uuid>,
}

/// Settles the in-flight tasks in `scope` against the manager: a finished
/// one gets its outcome, a lost one is requeued, and an attempt the
/// manager never received is delivered now, under the same attempt number.
pub(crate) async fn settle_in_flight(
    store: &Store,
    manager: &ManagerClient,
    scope: &InFlightScope,
) -> Result<SettleReport> {
    let tasks = store.in_flight(scope).await?;
    let mut report = SettleReport::default();
    for chunk in tasks.chunks(MAX_TASK_STATES) {
        let ids = chunk.iter().map(|task| task.id.clone()).collect();
        let answers = manager
            .task_states(ids)
            .await
            .map_err(|err| Error::unavailable(err.to_string()))?;
        for (task, answer) in chunk.iter().zip(answers) {
            report.checked += 1;
            let applied = settle_one(store, manager, task, answer, &mut report).await?;
            if applied != Applied::InFlight {
                report.settled += 1;
                report.workflows.insert(task.workflow_id);
            }
        }
    }
    if report.redelivered > 0 || report.settled > 0 {
        tracing::info!(
            checked = report.checked,
            redelivered = report.redelivered,
            settled = report.settled,
            "settled tasks in flight"
        );
    }
    Ok(report)
}

async fn settle_one(
    store: &Store,
    manager: &ManagerClient,
    task: &InFlight,
    answer: RemoteTask,
    report: &mut SettleReport,
) -> Result<Applied> {
    let never_delivered = match answer {
        RemoteTask::Unknown => true,
        // The manager's last attempt is older than ours: ours never
        // arrived.
        RemoteTask::Lost { attempt } => attempt < task.attempts,
        RemoteTask::InFlight { .. } | RemoteTask::Completed { .. } => false,
    };
    if !never_delivered {
        return apply(store, &task.id, task.attempts, Ok(answer)).await;
    }
    report.redelivered += 1;
    let outgoing = OutgoingTask {
        agent: task.agent_id,
        task_id: task.id.clone(),
        attempt: task.attempts,
        workflow_id: task.workflow_id,
        workflow_name: task.workflow_name.clone(),
        prompt: task.prompt.clone(),
        script: task.script.clone(),
        fields: task.fields.clone(),
        timeout: task.timeout,
        tool_policy: task.tool_policy.clone(),
    };
    let answer = manager.dispatch(outgoing).await;
    if let Err(ManagerError::Unavailable(reason)) = &answer {
        // We cannot tell whether it arrived: leave it for the next pass.
        return Err(Error::unavailable(format!(
            "agent-manager unreachable: {reason}"
        )));
    }
    apply(store, &task.id, task.attempts, answer).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dispatch_answer_means_one_thing_for_our_attempt() {
        assert_eq!(
            judge(2, Ok(RemoteTask::InFlight { attempt: 2 })),
            Verdict::InFlight {
                attempt: 2,
                align: false
            }
        );
        assert_eq!(
            judge(1, Ok(RemoteTask::InFlight { attempt: 3 })),
            Verdict::InFlight {
                attempt: 3,
                align: true
            },
            "the manager held the task already: its attempt count wins"
        );
        assert_eq!(
            judge(
                4,
                Ok(RemoteTask::Completed {
                    attempt: 2,
                    outcome: TaskEnd::Succeeded,
                    output: "done".into()
                })
            ),
            Verdict::Finished {
                end: TaskEnd::Succeeded,
                output: "done".into()
            },
            "finished by an earlier attempt is finished"
        );
        assert_eq!(
            judge(2, Ok(RemoteTask::Lost { attempt: 2 })),
            Verdict::Lost { attempt: 2 }
        );
        assert!(
            matches!(
                judge(3, Ok(RemoteTask::Lost { attempt: 2 })),
                Verdict::NotDelivered(_)
            ),
            "an older attempt lost says nothing of ours: it was never delivered"
        );
        assert!(matches!(
            judge(1, Ok(RemoteTask::Unknown)),
            Verdict::NotDelivered(_)
        ));
        let refused = judge(1, Err(ManagerError::Refused("agent not ready".into())));
        assert_eq!(
            refused,
            Verdict::NotDelivered("not delivered: agent not ready".into())
        );
    }
}
