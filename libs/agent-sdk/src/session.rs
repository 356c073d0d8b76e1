//! One session with the manager, from hello to its end: tasks in, reports
//! out, heartbeats both ways.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use shepherd_proto::agentmanager::v1::{
    AgentHeartbeat, AgentMessage, Hello, agent_message, agent_session_client::AgentSessionClient,
    manager_message,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::approvals::Approver;
use crate::config::AgentConfig;
use crate::ledger::{Delivery, Ledger, accepted_message};
use crate::task::{IncomingTask, Progress, TaskHandler, TaskSpec};

pub(crate) enum SessionEnd {
    Refused(String),
    /// The manager asked the agent to exit (an external agent's restart,
    /// stop or delete).
    Exit(String),
    Lost {
        was_ready: bool,
        reason: String,
    },
}

/// Test hook: `SHEPHERD_FAILPOINTS` naming `sdk.ignore_cancel` makes the
/// agent ignore Cancel messages (a wedged agent, for tests of the
/// manager's grace period). Off unless set.
fn ignores_cancel() -> bool {
    static IGNORE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IGNORE.get_or_init(|| {
        std::env::var("SHEPHERD_FAILPOINTS").is_ok_and(|points| {
            points
                .split(',')
                .any(|p| p.trim().starts_with("sdk.ignore_cancel"))
        })
    })
}

/// One session, from hello to its end.
pub(crate) async fn session<H: TaskHandler>(
    config: &AgentConfig,
    channel: Channel,
    handler: Arc<H>,
    ledger: &Ledger,
) -> SessionEnd {
    let end = session_inner(config, channel, handler, ledger).await;
    ledger.close();
    end
}

async fn session_inner<H: TaskHandler>(
    config: &AgentConfig,
    channel: Channel,
    handler: Arc<H>,
    ledger: &Ledger,
) -> SessionEnd {
    let (outbound, requests) = mpsc::channel::<AgentMessage>(256);
    let hello = AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: config.agent_id.clone(),
            session_token: config.session_token.clone(),
            held_tasks: ledger.held(),
            instance_id: config.instance_id.clone(),
        })),
    };
    // The channel is empty: this cannot fail.
    let _ = outbound.try_send(hello);

    let mut client = AgentSessionClient::new(channel);
    let mut inbound = match client.connect(ReceiverStream::new(requests)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return end_for(status, false),
    };

    // The first message is Welcome: it says how often to heartbeat.
    let mut interval = Duration::from_secs(5);
    let mut ticker = tokio::time::interval(interval);
    let mut silent_until = Instant::now() + interval * 3;
    let mut ready = false;
    loop {
        tokio::select! {
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => return lost(ready, "the manager closed the session"),
                    Err(status) => return end_for(status, ready),
                };
                silent_until = Instant::now() + interval * 3;
                ledger.heard();
                match message.kind {
                    Some(manager_message::Kind::Welcome(welcome)) => {
                        if let Some(every) = welcome.heartbeat_interval.and_then(|d| Duration::try_from(d).ok())
                            && !every.is_zero()
                        {
                            interval = every;
                            ticker = tokio::time::interval(interval);
                            silent_until = Instant::now() + interval * 3;
                        }
                        ready = true;
                        tracing::info!(generation = welcome.generation, "session open; agent is ready");
                        // Unacknowledged reports and unanswered approval
                        // requests go out again on every new session.
                        let reports = ledger.open(outbound.clone());
                        let pending = ledger.pending_approvals();
                        for report in reports.into_iter().chain(pending) {
                            if outbound.send(report).await.is_err() {
                                return lost(ready, "session request stream closed");
                            }
                        }
                    }
                    Some(manager_message::Kind::Task(task)) => {
                        let delivery = ledger.deliver(&task.task_id, task.attempt, task.deadline);
                        let (cancel, budget) = match &delivery {
                            Delivery::Run(cancel, budget) => (cancel.clone(), budget.clone()),
                            _ => (CancellationToken::new(), crate::budget::Budget { spent: tokio::sync::watch::channel(None).1 }),
                        };
                        let progress_task_id = task.task_id.clone();
                        let approver = Approver {
                            task_id: task.task_id.clone(),
                            workflow_id: task.spec.as_ref().map(|spec| spec.workflow_id.clone()).unwrap_or_default(),
                            cancel: cancel.clone(),
                            ledger: ledger.clone(),
                        };
                        let incoming = IncomingTask {
                            task_id: task.task_id,
                            payload: task.payload,
                            attempt: task.attempt,
                            trace_context: task.trace_context,
                            spec: task.spec.map(TaskSpec::from),
                            deadline: task
                                .deadline
                                .and_then(|at| std::time::SystemTime::try_from(at).ok()),
                            cancel,
                            progress: Progress {
                                task_id: progress_task_id,
                                ledger: ledger.clone(),
                            },
                            approver,
                            budget,
                        };
                        match delivery {
                            Delivery::Run(..) => spawn_task(&handler, ledger, incoming),
                            Delivery::Running => {
                                tracing::info!(task_id = %incoming.task_id, attempt = incoming.attempt, "task delivered again while it runs; the running execution answers for it");
                                let _ = outbound.send(accepted_message(&incoming.task_id)).await;
                            }
                            Delivery::Report(report) => {
                                tracing::info!(task_id = %incoming.task_id, attempt = incoming.attempt, "task delivered again after it finished; sending its report again");
                                let _ = outbound.send(report).await;
                            }
                        }
                    }
                    Some(manager_message::Kind::ReportAck(ack)) => {
                        ledger.acknowledged(&ack.task_id, ack.attempt);
                    }
                    Some(manager_message::Kind::Cancel(cancel)) => {
                        if ignores_cancel() {
                            tracing::warn!(task_id = %cancel.task_id, "ignoring a cancel (failpoint sdk.ignore_cancel)");
                        } else {
                            tracing::info!(task_id = %cancel.task_id, reason = %cancel.reason, "cancelling task");
                            ledger.cancel(&cancel.task_id);
                        }
                    }
                    Some(manager_message::Kind::ApprovalAnswer(answer)) => {
                        ledger.approval_answered(answer);
                    }
                    Some(manager_message::Kind::BudgetNotice(notice)) => {
                        tracing::warn!(task_id = %notice.task_id, summary = %notice.summary, "a budget of the task is spent");
                        let grace = notice.grace.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default();
                        ledger.budget_spent(&notice.task_id, crate::budget::BudgetSpent { summary: notice.summary, grace });
                    }
                    Some(manager_message::Kind::Exit(exit)) => return SessionEnd::Exit(exit.reason),
                    Some(manager_message::Kind::Heartbeat(_)) | None => {}
                }
            }
            _ = ticker.tick() => {
                let beat = AgentMessage { kind: Some(agent_message::Kind::Heartbeat(AgentHeartbeat {})) };
                if outbound.send(beat).await.is_err() {
                    return lost(ready, "session request stream closed");
                }
            }
            _ = tokio::time::sleep_until(silent_until) => {
                return lost(ready, "no heartbeat from the manager");
            }
        }
    }
}

/// Runs the handler and reports the result on whatever session is live
/// when it finishes (the report is kept until the manager acknowledges
/// it). The task is accepted (see `Ledger::accept`) only if the handler
/// does not finish on its first poll.
fn spawn_task<H: TaskHandler>(handler: &Arc<H>, ledger: &Ledger, task: IncomingTask) {
    let handler = handler.clone();
    let ledger = ledger.clone();
    // The task's span continues the dispatcher's trace (W3C context carried
    // in the task message).
    let span = tracing::info_span!(
        "task",
        task_id = %task.task_id,
        attempt = task.attempt,
        trace_id = tracing::field::Empty,
    );
    shepherd_telemetry::propagation::adopt_from_map(&span, &task.trace_context);
    tokio::spawn(
        async move {
            let task_id = task.task_id.clone();
            let mut run = std::pin::pin!(handler.handle(task));
            // One poll with this task's own context: a handler that has to
            // wait is woken as usual.
            let first = std::future::poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await;
            let result = match first {
                Poll::Ready(result) => result,
                Poll::Pending => {
                    ledger.accept(&task_id).await;
                    run.await
                }
            };
            let (report, session) = ledger.finish(&task_id, result);
            if let Some(session) = session {
                let _ = session.send(report).await;
            }
        }
        .instrument(span),
    );
}

fn end_for(status: tonic::Status, was_ready: bool) -> SessionEnd {
    match status.code() {
        Code::Unauthenticated => SessionEnd::Refused(status.message().to_owned()),
        _ => lost(
            was_ready,
            &format!("{}: {}", status.code(), status.message()),
        ),
    }
}

fn lost(was_ready: bool, reason: &str) -> SessionEnd {
    SessionEnd::Lost {
        was_ready,
        reason: reason.to_owned(),
    }
}
