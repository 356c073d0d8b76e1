//! The courier: passes every approval decision about an agent whose
//! session this node holds to that session at once, whichever node
//! decided (through the `ApprovalDecided` events of the log), and every
//! spent budget (`BudgetExhausted`), which the session turns into a notice
//! to each task it concerns. Best effort: an answer missed here (the feed
//! lagged, the session was busy) reaches the agent when it sends its
//! request again; a missed budget notice costs the tasks their warning,
//! not the budget (nothing more is dispatched either way).

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
        let (agent, message) = if let Some(decided) = crate::events::decided_approval(&event) {
            (decided.agent_id, ToAgent::ApprovalAnswer(decided.answer))
        } else if let Some(spent) = crate::events::budget_spent(&event) {
            spent
        } else {
            continue;
        };
        let Some(session) = sessions.get(agent) else {
            continue;
        };
        let _ = session.tasks.try_send(message);
    }
}
