//! What each command does: translate arguments to requests, print results.
//! One module per family of commands; `agent_file` reads an agent's spec.

mod agent_file;
mod agents;
mod budgets;
mod keys;
mod tasks;
mod watch;
mod workflows;

use shepherd_proto::agentmanager::v1::{self as am};
use shepherd_proto::scheduler::v1 as sched;

use crate::cli::{Cli, Command, EventCommand, RunnerCommand};
use crate::clients::Clients;
use crate::render;

pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut clients = Clients::connect(&cli)?;
    match cli.command {
        Command::Agents(command) => clients.agents(command).await,
        Command::Workflows(command) => clients.workflows(command).await,
        Command::Tasks(command) => clients.tasks(command).await,
        Command::Runners(RunnerCommand::List { agent }) => {
            let agent_id = match agent {
                Some(agent) => clients.agent_id(&agent).await?,
                None => String::new(),
            };
            let runners = clients
                .workflows
                .list_runners(sched::ListRunnersRequest { agent_id })
                .await?
                .into_inner()
                .runners;
            render::many(clients.output, &runners);
            Ok(())
        }
        Command::Events(EventCommand::Watch {
            after,
            agent,
            limit,
        }) => {
            let agent_id = match agent {
                Some(agent) => clients.agent_id(&agent).await?,
                None => String::new(),
            };
            clients.watch(after, agent_id, limit, |_| true).await
        }
        Command::Approvals(command) => clients.approvals(command).await,
        Command::Keys(command) => clients.keys(command).await,
        Command::Budgets(command) => clients.budgets(command).await,
        Command::Top => crate::top::run(clients.agents.clone(), clients.workflows.clone()).await,
        Command::Mcp { allow_writes, http } => match http {
            Some(addr) => {
                crate::mcp::serve_http(clients, allow_writes, &addr, cli.token.clone()).await
            }
            None => crate::mcp::run(clients, allow_writes).await,
        },
        Command::Audit {
            who,
            target,
            since,
            limit,
        } => {
            let request = shepherd_proto::audit::v1::ListAuditEventsRequest {
                who: who.unwrap_or_default(),
                target: target.unwrap_or_default(),
                since: since
                    .and_then(|ago| std::time::SystemTime::now().checked_sub(ago))
                    .map(Into::into),
                page_size: limit,
                ..Default::default()
            };
            let (mut agents, mut workflows) = (clients.agents.clone(), clients.workflows.clone());
            let (manager, scheduler) = tokio::join!(
                agents.list_audit_events(request.clone()),
                workflows.list_audit_events(request)
            );
            let mut events: Vec<render::Audited> = manager?
                .into_inner()
                .events
                .into_iter()
                .map(|event| render::Audited("agent-manager", event))
                .chain(
                    scheduler?
                        .into_inner()
                        .events
                        .into_iter()
                        .map(|event| render::Audited("scheduler", event)),
                )
                .collect();
            // Newest first, across both services (ids are time-ordered).
            events.sort_by(|a, b| b.1.id.cmp(&a.1.id));
            events.truncate(usize::try_from(limit).unwrap_or(0));
            render::many(clients.output, &events);
            Ok(())
        }
        Command::Manager => {
            let info = clients
                .agents
                .get_manager_info(am::GetManagerInfoRequest {})
                .await?
                .into_inner();
            render::one(clients.output, &info);
            Ok(())
        }
    }
}
