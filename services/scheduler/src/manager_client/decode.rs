//! Reading the manager's answers and event stream into the scheduler's
//! terms: the wire types are decoded once, here.

use shepherd_proto::agentmanager::v1 as pb;
use uuid::Uuid;

use crate::model::TaskEnd;

/// Where a task stands at the agent-manager (its answer to a dispatch or a
/// state query), in the scheduler's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RemoteTask {
    /// The manager never delivered it.
    Unknown,
    /// Delivered to the agent's live session (perhaps by this very call)
    /// and not finished.
    InFlight { attempt: u32 },
    /// Finished with this outcome.
    Completed {
        attempt: u32,
        outcome: TaskEnd,
        output: String,
    },
    /// The attempt was lost (its session ended before it finished).
    Lost { attempt: u32 },
}

/// How a task ended, from the manager's outcome.
fn task_end(outcome: pb::TaskOutcome) -> TaskEnd {
    match outcome {
        pb::TaskOutcome::Succeeded => TaskEnd::Succeeded,
        pb::TaskOutcome::TimedOut => TaskEnd::TimedOut,
        pb::TaskOutcome::Cancelled => TaskEnd::Cancelled,
        pb::TaskOutcome::Failed | pb::TaskOutcome::Unspecified => TaskEnd::Failed,
    }
}

pub(super) fn remote_task(
    state: pb::TaskState,
    attempt: u32,
    outcome: pb::TaskOutcome,
    output: String,
) -> RemoteTask {
    match state {
        pb::TaskState::Delivered | pb::TaskState::Accepted => RemoteTask::InFlight { attempt },
        pb::TaskState::Completed => RemoteTask::Completed {
            attempt,
            outcome: task_end(outcome),
            output,
        },
        pb::TaskState::Lost => RemoteTask::Lost { attempt },
        pb::TaskState::Unknown | pb::TaskState::Unspecified => RemoteTask::Unknown,
    }
}

/// What the scheduler hears on the manager's event stream, in its own
/// terms: the wire types are decoded once, here.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Heard {
    Event {
        sequence: u64,
        agent: Option<Uuid>,
        event: AgentEvent,
    },
    Heartbeat {
        latest: u64,
    },
    /// Events up to `pruned_through` are gone for good: resynchronise.
    Resync {
        requested_after: u64,
        pruned_through: u64,
    },
    /// An empty message.
    Nothing,
}

/// An agent event, as far as the scheduler cares.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AgentEvent {
    Ready,
    Restarted {
        generation: u64,
        reason: String,
    },
    /// Started, disconnected, exited or stopped: not ready.
    NotReady,
    Deleted,
    TaskCompleted {
        task_id: String,
        /// None: the manager numbered no attempt.
        attempt: Option<u32>,
        end: TaskEnd,
        output: String,
    },
    TaskLost {
        task_id: String,
        attempt: Option<u32>,
        reason: String,
    },
    TaskProgress {
        task_id: String,
        attempt: u32,
        message: String,
        /// 0 to 1; negative: unknown.
        fraction: f32,
        output: String,
    },
    /// What an agent reported of an attempt's usage so far (totals).
    TaskUsage {
        task_id: String,
        attempt: u32,
        input_tokens: u64,
        output_tokens: u64,
        cost: f64,
    },
    /// The approval of a spent budget was decided (approved or not).
    BudgetDecided {
        /// The key the scheduler raised it with.
        key: String,
        approved: bool,
    },
    /// Created or accepted: nothing for the scheduler to do.
    Other,
}

/// "deploy: approved by alice (ship it)".
fn approval_outcome(approval: &pb::Approval) -> String {
    let state = shepherd_proto::short_name(approval.state().as_str_name(), "APPROVAL_STATE_");
    let by = if approval.decided_by.is_empty() {
        String::new()
    } else {
        format!(" by {}", approval.decided_by)
    };
    let comment = if approval.comment.is_empty() {
        String::new()
    } else {
        format!(" ({})", approval.comment)
    };
    format!("{}: {state}{by}{comment}", approval.tool)
}

/// The agent event stream.
pub(crate) struct EventStream(pub(super) tonic::Streaming<pb::WatchAgentEventsResponse>);

impl EventStream {
    /// The next message; None when the stream ended, Err when it broke.
    pub(crate) async fn next(&mut self) -> Result<Option<Heard>, String> {
        match self.0.message().await {
            Ok(message) => Ok(message.map(Heard::from)),
            Err(status) => Err(status.message().to_owned()),
        }
    }
}

impl From<pb::WatchAgentEventsResponse> for Heard {
    fn from(message: pb::WatchAgentEventsResponse) -> Self {
        use pb::watch_agent_events_response::Kind as Message;
        match message.kind {
            Some(Message::Event(event)) => Self::Event {
                sequence: event.sequence,
                agent: Uuid::parse_str(&event.agent_id).ok(),
                event: AgentEvent::from(event.kind),
            },
            Some(Message::Heartbeat(beat)) => Self::Heartbeat {
                latest: beat.latest_sequence,
            },
            Some(Message::ResyncRequired(resync)) => Self::Resync {
                requested_after: resync.requested_after_sequence,
                pruned_through: resync.pruned_through_sequence,
            },
            None => Self::Nothing,
        }
    }
}

/// The event kinds the scheduler has no use for (`AgentEvent::from` maps
/// them to `Other`); it watches every other kind, so a new kind reaches it
/// unless it is named here.
pub(super) const IGNORED_KINDS: [&str; 3] = ["created", "task_accepted", "budget_exhausted"];

impl From<Option<pb::agent_event::Kind>> for AgentEvent {
    fn from(kind: Option<pb::agent_event::Kind>) -> Self {
        use pb::agent_event::Kind;
        let attempt = |n: u32| (n > 0).then_some(n);
        match kind {
            Some(Kind::Ready(_)) => Self::Ready,
            Some(Kind::Restarted(restarted)) => Self::Restarted {
                generation: restarted.generation,
                reason: restarted.reason,
            },
            Some(Kind::Started(_) | Kind::Disconnected(_) | Kind::Exited(_) | Kind::Stopped(_)) => {
                Self::NotReady
            }
            Some(Kind::Deleted(_)) => Self::Deleted,
            Some(Kind::TaskCompleted(done)) => Self::TaskCompleted {
                end: task_end(done.outcome()),
                attempt: attempt(done.attempt),
                task_id: done.task_id,
                output: done.output,
            },
            Some(Kind::TaskLost(lost)) => Self::TaskLost {
                attempt: attempt(lost.attempt),
                task_id: lost.task_id,
                reason: lost.reason,
            },
            Some(Kind::TaskProgress(progress)) => Self::TaskProgress {
                task_id: progress.task_id,
                attempt: progress.attempt,
                message: progress.message,
                fraction: progress.fraction,
                output: progress.output,
            },
            // An approval shows on its task as progress: what it waits
            // for, then how that was decided.
            Some(Kind::ApprovalRequested(pb::ApprovalRequested {
                approval: Some(approval),
            })) => Self::TaskProgress {
                message: format!(
                    "waiting for approval to use {} (approval {})",
                    approval.tool, approval.id
                ),
                task_id: approval.task_id,
                attempt: approval.attempt,
                fraction: -1.0,
                output: String::new(),
            },
            Some(Kind::ApprovalDecided(pb::ApprovalDecided {
                approval: Some(approval),
            })) if approval.task_id.is_empty()
                && approval.tool == shepherd_proto::BUDGET_APPROVAL_TOOL =>
            {
                Self::BudgetDecided {
                    approved: approval.state() == pb::ApprovalState::Approved,
                    key: approval.request_id,
                }
            }
            Some(Kind::TaskUsage(usage)) => Self::TaskUsage {
                task_id: usage.task_id,
                attempt: usage.attempt,
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cost: usage.cost,
            },
            Some(Kind::ApprovalDecided(pb::ApprovalDecided {
                approval: Some(approval),
            })) => Self::TaskProgress {
                message: approval_outcome(&approval),
                task_id: approval.task_id,
                attempt: approval.attempt,
                fraction: -1.0,
                output: String::new(),
            },
            Some(
                Kind::Created(_)
                | Kind::TaskAccepted(_)
                | Kind::BudgetExhausted(_)
                | Kind::ApprovalRequested(_)
                | Kind::ApprovalDecided(_),
            )
            | None => Self::Other,
        }
    }
}

#[cfg(test)]
mod decoding {
    use super::*;

    fn event(agent: &str, kind: pb::agent_event::Kind) -> pb::WatchAgentEventsResponse {
        pb::WatchAgentEventsResponse {
            kind: Some(pb::watch_agent_events_response::Kind::Event(
                pb::AgentEvent {
                    sequence: 7,
                    agent_id: agent.to_owned(),
                    kind: Some(kind),
                    ..Default::default()
                },
            )),
        }
    }

    #[test]
    fn the_wire_is_read_into_the_schedulers_terms() {
        let agent = Uuid::now_v7();
        let done = Heard::from(event(
            &agent.to_string(),
            pb::agent_event::Kind::TaskCompleted(pb::TaskCompleted {
                task_id: "w:k".into(),
                outcome: pb::TaskOutcome::TimedOut as i32,
                output: "out".into(),
                attempt: 0,
            }),
        ));
        assert_eq!(
            done,
            Heard::Event {
                sequence: 7,
                agent: Some(agent),
                event: AgentEvent::TaskCompleted {
                    task_id: "w:k".into(),
                    attempt: None,
                    end: TaskEnd::TimedOut,
                    output: "out".into(),
                },
            }
        );
        let exited = Heard::from(event(
            "not-a-uuid",
            pb::agent_event::Kind::Exited(pb::AgentExited::default()),
        ));
        assert_eq!(
            exited,
            Heard::Event {
                sequence: 7,
                agent: None,
                event: AgentEvent::NotReady,
            }
        );
        assert_eq!(
            Heard::from(pb::WatchAgentEventsResponse { kind: None }),
            Heard::Nothing
        );
    }
}
