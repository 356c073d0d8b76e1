//! The approvals courier: passes every decision about an agent whose
//! session this node holds to that session at once, whichever node
//! decided (through the `ApprovalDecided` events of the log). Best effort:
//! an answer missed here (the feed lagged, the session was busy) reaches
//! the agent when it sends its request again.

use tokio_util::sync::CancellationToken;

use crate::events::EventLog;
use crate::protocol::ToAgent;
use crate::sessions::Sessions;

/// Runs until `shutdown`.
pub(crate) async fn run(events: EventLog, sessions: Sessions, shutdown: CancellationToken) {
    let mut live = events.subscribe_live();
    loop {
        let event = tokio::select! {
            event = live.recv() => event,
            _ = shutdown.cancelled() => return,
        };
        let event = match event {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "approval courier lagged; agents ask again");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(decided) = crate::events::decided_approval(&event) else {
            continue;
        };
        let Some(session) = sessions.get(decided.agent_id) else {
            continue;
        };
        let _ = session
            .tasks
            .try_send(ToAgent::ApprovalAnswer(decided.answer));
    }
}
