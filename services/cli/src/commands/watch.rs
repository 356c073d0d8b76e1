//! `shepherd events watch`: the agent event stream, resumed across
//! reconnects.

use shepherd_proto::agentmanager::v1::{self as am, watch_agent_events_response};

use crate::clients::Clients;
use crate::render;

impl Clients {
    /// Follows the event log; on a broken stream, resumes after the last
    /// event printed (so nothing is shown twice or skipped).
    /// Prints the events after `after` that `keep` selects, live, resuming
    /// after disconnects; returns after `limit` of them (if given).
    pub(crate) async fn watch(
        &mut self,
        after: u64,
        agent_id: String,
        limit: Option<usize>,
        keep: fn(&am::AgentEvent) -> bool,
    ) -> anyhow::Result<()> {
        let mut cursor = after;
        let mut printed = 0usize;
        let mut reconnect = shepherd_client::Reconnect::default();
        loop {
            let stream = self
                .agents
                .watch_agent_events(am::WatchAgentEventsRequest {
                    after_sequence: cursor,
                    agent_id: agent_id.clone(),
                    ..Default::default()
                })
                .await;
            let mut stream = match stream {
                Ok(stream) => stream.into_inner(),
                Err(status) => {
                    if reconnect.retry(&status).await {
                        continue;
                    }
                    return Err(status.into());
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        reconnect.reset();
                        match message.kind {
                            Some(watch_agent_events_response::Kind::Event(event)) => {
                                cursor = event.sequence;
                                if !keep(&event) {
                                    continue;
                                }
                                render::event(self.output, &event);
                                printed += 1;
                                if limit.is_some_and(|limit| printed >= limit) {
                                    return Ok(());
                                }
                            }
                            Some(watch_agent_events_response::Kind::ResyncRequired(resync)) => {
                                eprintln!("warning: {}", resync.message);
                                cursor = resync.pruned_through_sequence;
                            }
                            Some(watch_agent_events_response::Kind::Heartbeat(_)) | None => {}
                        }
                    }
                    Ok(None) | Err(_) => {
                        eprintln!("event stream interrupted; resuming after {cursor}");
                        break;
                    }
                }
            }
        }
    }
}
