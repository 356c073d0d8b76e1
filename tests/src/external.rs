//! External agents in tests: instances of the reference agent launched by
//! the test (standing in for systemd or a Deployment), and hand-made
//! hellos that show how a session is refused.

use std::process::Stdio;

use shepherd_proto::agentmanager::v1::{
    self as am, agent_message, agent_session_client::AgentSessionClient,
};
use shepherd_testkit::bin_path;
use tokio::process::{Child, Command};

/// Starts an instance of the reference agent as an external agent that
/// knows the managers at `urls` (comma-separated).
pub fn launch_external(agent: &str, credential: &str, urls: &str) -> anyhow::Result<Child> {
    Ok(Command::new(bin_path("shepherd-agent")?)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SHEPHERD_AGENT_ID", agent)
        .env("SHEPHERD_AGENT_CREDENTIAL", credential)
        .env("SHEPHERD_MANAGER_URL", urls)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// Opens a session by hand at `url` with `credential`; the code it is
/// refused with (OK: it was accepted).
pub async fn session_refusal(
    url: &str,
    agent: &str,
    credential: &str,
) -> anyhow::Result<tonic::Code> {
    let mut client = AgentSessionClient::new(shepherd_testkit::channel(url).await?);
    let hello = am::AgentMessage {
        kind: Some(agent_message::Kind::Hello(am::Hello {
            agent_id: agent.to_owned(),
            session_token: credential.to_owned(),
            instance_id: "intruder".into(),
            ..Default::default()
        })),
    };
    let answer = match client.connect(tokio_stream::iter(vec![hello])).await {
        Err(status) => Err(status),
        Ok(response) => response.into_inner().message().await.map(drop),
    };
    Ok(match answer {
        Err(status) => status.code(),
        Ok(()) => tonic::Code::Ok,
    })
}
