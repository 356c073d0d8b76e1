//! `shepherd agents ...`.

use std::collections::HashMap;

use shepherd_proto::agentmanager::v1::{self as am};
use shepherd_proto::scheduler::v1 as sched;

use super::agent_file::{agent_from_file, agent_from_flags};
use crate::cli::{AgentCommand, Output};
use crate::clients::{Clients, UsageError};
use crate::render;

impl Clients {
    pub(super) async fn agents(&mut self, command: AgentCommand) -> anyhow::Result<()> {
        let output = self.output;
        let agent = match command {
            AgentCommand::Create(create) => {
                let agent = match &create.file {
                    Some(path) => agent_from_file(path)?,
                    None => agent_from_flags(create)?,
                };
                self.agents
                    .create_agent(am::CreateAgentRequest { agent: Some(agent) })
                    .await?
                    .into_inner()
            }
            AgentCommand::List { status, labels } => {
                let status = match status {
                    None => am::AgentStatus::Unspecified,
                    Some(s) => am::AgentStatus::from_str_name(&format!(
                        "AGENT_STATUS_{}",
                        s.to_uppercase()
                    ))
                    .ok_or_else(|| {
                        UsageError(format!(
                            "status {s:?}: use pending, starting, ready, exited, failed or stopped"
                        ))
                    })?,
                };
                let labels: HashMap<String, String> = labels.into_iter().collect();
                let all = self.all_agents(status, labels).await?;
                render::many(output, &all);
                return Ok(());
            }
            AgentCommand::Get { agent } => {
                let agent_id = self.agent_id(&agent).await?;
                let agent = self
                    .agents
                    .get_agent(am::GetAgentRequest { agent_id })
                    .await?
                    .into_inner();
                let budget = self.budget_of("", &agent.id).await;
                render::one_with_budget(output, &agent, budget.as_ref());
                return Ok(());
            }
            AgentCommand::Start { agent } => {
                let agent_id = self.agent_id(&agent).await?;
                self.agents
                    .start_agent(am::StartAgentRequest { agent_id })
                    .await?
                    .into_inner()
            }
            AgentCommand::Stop { agent } => {
                let agent_id = self.agent_id(&agent).await?;
                self.agents
                    .stop_agent(am::StopAgentRequest { agent_id })
                    .await?
                    .into_inner()
            }
            AgentCommand::Pause { agent, reason } => {
                let agent_id = self.agent_id(&agent).await?;
                let pause = self
                    .workflows
                    .pause_agent(sched::PauseAgentRequest { agent_id, reason })
                    .await?
                    .into_inner();
                eprintln!(
                    "paused dispatch to agent {} (by {})",
                    pause.agent_id, pause.by
                );
                return Ok(());
            }
            AgentCommand::Resume { agent } => {
                let agent_id = self.agent_id(&agent).await?;
                self.workflows
                    .resume_agent(sched::ResumeAgentRequest {
                        agent_id: agent_id.clone(),
                    })
                    .await?;
                eprintln!("resumed dispatch to agent {agent_id}");
                return Ok(());
            }
            AgentCommand::Restart { agent } => {
                let agent_id = self.agent_id(&agent).await?;
                self.agents
                    .restart_agent(am::RestartAgentRequest { agent_id })
                    .await?
                    .into_inner()
            }
            AgentCommand::RotateCredential { agent } => {
                let agent_id = self.agent_id(&agent).await?;
                self.agents
                    .rotate_agent_credential(am::RotateAgentCredentialRequest { agent_id })
                    .await?
                    .into_inner()
            }
            AgentCommand::Delete { agent } => {
                let agent_id = self.agent_id(&agent).await?;
                self.agents
                    .delete_agent(am::DeleteAgentRequest {
                        agent_id: agent_id.clone(),
                    })
                    .await?;
                eprintln!("deleted agent {agent_id}");
                return Ok(());
            }
            AgentCommand::Logs {
                agent,
                stderr,
                lines,
            } => {
                let agent_id = self.agent_id(&agent).await?;
                let stream = if stderr {
                    am::LogStream::Stderr
                } else {
                    am::LogStream::Stdout
                };
                let lines = self
                    .agents
                    .get_agent_logs(am::GetAgentLogsRequest {
                        agent_id,
                        stream: stream as i32,
                        tail_lines: lines,
                    })
                    .await?
                    .into_inner()
                    .lines;
                match output {
                    Output::Json => println!("{}", serde_json::json!(lines)),
                    Output::Table => lines.iter().for_each(|line| println!("{line}")),
                }
                return Ok(());
            }
        };
        render::one(output, &agent);
        Ok(())
    }
}
