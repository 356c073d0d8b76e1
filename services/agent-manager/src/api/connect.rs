//! The front door of an agent's session (`AgentSession.Connect`): the
//! hello is checked before any I/O, then the manager takes the session.

use std::time::Duration;

use futures_util::StreamExt;
use shepherd_proto::agentmanager::v1::{
    self as pb, agent_message, agent_session_server::AgentSession,
};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::{Api, ResponseStream, session, validate_task_id};
use crate::error::Error;
use crate::model::MAX_INSTANCE_ID;

/// How long a new session may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Most tasks one agent process may name as held in its hello.
pub(crate) const MAX_HELD_TASKS: usize = 10_000;

#[tonic::async_trait]
impl AgentSession for Api {
    type ConnectStream = ResponseStream<pb::ManagerMessage>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10s; send Hello first"))??;
        let Some(pb::AgentMessage {
            kind: Some(agent_message::Kind::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of a session must be Hello{agent_id, session_token}",
            ));
        };
        // Never echoed: it could be megabytes, and it is the caller's.
        let agent_id = Uuid::parse_str(&hello.agent_id).map_err(|_| {
            Status::unauthenticated("hello.agent_id is not an agent id; use SHEPHERD_AGENT_ID")
        })?;
        if hello.held_tasks.len() > MAX_HELD_TASKS {
            return Err(Status::invalid_argument(format!(
                "hello.held_tasks has {} entries; at most {MAX_HELD_TASKS}",
                hello.held_tasks.len()
            )));
        }
        // What the agent says of itself reaches the database: checked here,
        // before any I/O, so a NUL or a megabyte is the agent's error.
        for held in &hello.held_tasks {
            validate_task_id("hello.held_tasks.task_id", &held.task_id)?;
        }
        shepherd_platform::validate::text("hello.instance_id", &hello.instance_id, MAX_INSTANCE_ID)
            .map_err(Error::from)?;
        let outbound = self
            .manager
            .open_session(
                agent_id,
                &hello.session_token,
                hello
                    .held_tasks
                    .into_iter()
                    .map(session::held_task)
                    .collect(),
                hello.instance_id,
                inbound.map(|message| {
                    message
                        .map_err(|status| status.message().to_owned())
                        .and_then(session::from_agent)
                }),
            )
            .await?;
        Ok(Response::new(Box::pin(
            crate::ack_coalescing::AckCoalescing::new(outbound)
                .map(|message| Ok(session::to_agent(message))),
        )))
    }
}
