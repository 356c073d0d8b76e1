//! `shepherd top`: the fleet live in the terminal. Agents and workflows
//! (listed every two seconds and after every event), tasks/s and recent
//! events (from WatchAgentEvents, resumed from its last sequence when the
//! stream drops), and keys to restart/stop/start the selected agent,
//! trigger the selected workflow, filter and quit. Same connection and
//! auth as the rest of the CLI.

mod state;
mod view;

use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use shepherd_proto::agentmanager::v1::{
    self as am, agent_event, agent_manager_client::AgentManagerClient, watch_agent_events_response,
};
use shepherd_proto::scheduler::v1::{self as sched, scheduler_client::SchedulerClient};
use tokio::sync::mpsc;

use shepherd_client::Authed;
use state::{Focus, State};

const REFRESH: Duration = Duration::from_secs(2);

/// What the event feed tells the loop.
enum Feed {
    Connected(bool),
    Event { line: String, task_completed: bool },
}

pub(crate) async fn run(
    agents: AgentManagerClient<Authed>,
    workflows: SchedulerClient<Authed>,
) -> anyhow::Result<()> {
    let mut app = App {
        agents,
        workflows,
        state: State::default(),
    };
    // Fail before taking over the terminal if the services are not there.
    app.refresh().await?;
    let (feed_tx, mut feed) = mpsc::channel(256);
    let feed_task = tokio::spawn(follow_events(app.agents.clone(), feed_tx));
    let mut keys = read_keys();
    let mut terminal = ratatui::init();
    let mut refresh = tokio::time::interval(REFRESH);
    let result = loop {
        if let Err(err) = terminal.draw(|frame| view::draw(frame, &mut app.state)) {
            break Err(err.into());
        }
        tokio::select! {
            key = keys.recv() => match key {
                Some(key) => {
                    if app.key(key).await {
                        break Ok(());
                    }
                }
                None => break Ok(()),
            },
            item = feed.recv() => match item {
                Some(Feed::Connected(live)) => app.state.connected = live,
                Some(Feed::Event { line, task_completed }) => {
                    app.state.push_event(line, task_completed);
                    // Show what the event changed, not two seconds later.
                    refresh.reset_immediately();
                }
                None => {}
            },
            _ = refresh.tick() => {
                if let Err(err) = app.refresh().await {
                    app.state.status = format!("refresh failed: {}", err.message());
                }
            }
        }
    };
    ratatui::restore();
    feed_task.abort();
    result
}

/// Keys from a thread of their own (crossterm's reads block).
fn read_keys() -> mpsc::Receiver<KeyEvent> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        while !tx.is_closed() {
            match event::poll(Duration::from_millis(200)) {
                Ok(true) => match event::read() {
                    Ok(Event::Key(key)) if key.kind == KeyEventKind::Press => {
                        if tx.blocking_send(key).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

/// Follows the event log from now on, resuming after the last sequence it
/// saw when the stream drops.
async fn follow_events(mut client: AgentManagerClient<Authed>, feed: mpsc::Sender<Feed>) {
    let mut after = None;
    loop {
        let start = match after {
            Some(after) => Ok(after),
            None => client
                .get_manager_info(am::GetManagerInfoRequest {})
                .await
                .map(|info| info.into_inner().latest_sequence),
        };
        let stream = match start {
            Ok(start) => {
                after = Some(start);
                client
                    .watch_agent_events(am::WatchAgentEventsRequest {
                        after_sequence: start,
                        agent_id: String::new(),
                        ..Default::default()
                    })
                    .await
            }
            Err(status) => Err(status),
        };
        if let Ok(response) = stream {
            let _ = feed.send(Feed::Connected(true)).await;
            let mut stream = response.into_inner();
            while let Ok(Some(message)) = stream.message().await {
                if let Some(watch_agent_events_response::Kind::Event(event)) = message.kind {
                    after = Some(event.sequence);
                    if let Some(item) = describe(&event)
                        && feed.send(item).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
        if feed.send(Feed::Connected(false)).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn describe(event: &am::AgentEvent) -> Option<Feed> {
    use agent_event::Kind;
    let agent: String = event.agent_id.chars().take(8).collect();
    let (what, task_completed) = match event.kind.as_ref()? {
        Kind::Created(e) => (format!("created {}", e.name), false),
        Kind::Started(e) => (format!("started, pid {}", e.pid), false),
        Kind::Ready(_) => ("ready".into(), false),
        Kind::Disconnected(e) => (format!("disconnected: {}", e.reason), false),
        Kind::Exited(e) => (
            format!(
                "exited ({})",
                e.reason().as_str_name().trim_start_matches("EXIT_REASON_")
            ),
            false,
        ),
        Kind::Restarted(e) => (format!("restarted: {}", e.reason), false),
        Kind::Stopped(_) => ("stopped".into(), false),
        Kind::Deleted(_) => ("deleted".into(), false),
        Kind::TaskAccepted(e) => (format!("task {} accepted", e.task_id), false),
        Kind::TaskCompleted(e) => (format!("task {} completed", e.task_id), true),
        Kind::TaskLost(e) => (format!("task {} lost: {}", e.task_id, e.reason), false),
        Kind::ApprovalRequested(e) => (
            format!("asks approval: {}", approval_line(e.approval.as_ref())),
            false,
        ),
        Kind::ApprovalDecided(e) => (
            format!("approval: {}", approval_line(e.approval.as_ref())),
            false,
        ),
        Kind::BudgetExhausted(e) => (
            format!("budget spent: {} (approval {})", e.summary, e.approval_id),
            false,
        ),
        // Progress and usage are too chatty for this list.
        Kind::TaskProgress(_) | Kind::TaskUsage(_) => return None,
    };
    Some(Feed::Event {
        line: format!("#{} {agent} g{} {what}", event.sequence, event.generation),
        task_completed,
    })
}

struct App {
    agents: AgentManagerClient<Authed>,
    workflows: SchedulerClient<Authed>,
    state: State,
}

impl App {
    async fn refresh(&mut self) -> Result<(), tonic::Status> {
        let agents = self
            .agents
            .list_agents(am::ListAgentsRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await?
            .into_inner()
            .agents;
        let workflows = self
            .workflows
            .list_workflows(sched::ListWorkflowsRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await?
            .into_inner()
            .workflows;
        let runners = self
            .workflows
            .list_runners(sched::ListRunnersRequest::default())
            .await?
            .into_inner()
            .runners;
        self.state.keys = self
            .workflows
            .list_concurrency_keys(sched::ListConcurrencyKeysRequest {})
            .await?
            .into_inner()
            .keys;
        self.state.budgets = self
            .workflows
            .list_budgets(sched::ListBudgetsRequest {})
            .await?
            .into_inner()
            .budgets;
        self.state.agents = agents;
        self.state.workflows = workflows
            .into_iter()
            .map(|workflow| {
                let runner = runners
                    .iter()
                    .find(|r| r.workflow_id == workflow.id)
                    .cloned();
                (workflow, runner)
            })
            .collect();
        self.state.clamp();
        Ok(())
    }

    /// Handles a key; true to quit.
    async fn key(&mut self, key: KeyEvent) -> bool {
        let state = &mut self.state;
        if state.editing {
            match key.code {
                KeyCode::Enter => state.editing = false,
                KeyCode::Esc => {
                    state.editing = false;
                    state.filter.clear();
                }
                KeyCode::Backspace => {
                    state.filter.pop();
                }
                KeyCode::Char(c) => state.filter.push(c),
                _ => {}
            }
            state.clamp();
            return false;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return true,
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return true,
            KeyCode::Up | KeyCode::Char('k') => state.step(false),
            KeyCode::Down | KeyCode::Char('j') => state.step(true),
            KeyCode::Tab => state.toggle_focus(),
            KeyCode::Char('/') => state.editing = true,
            KeyCode::Char('r') => self.agent_action("restart").await,
            KeyCode::Char('s') => self.agent_action("stop").await,
            KeyCode::Char('S') => self.agent_action("start").await,
            KeyCode::Char('t') => self.trigger().await,
            _ => {}
        }
        false
    }

    async fn agent_action(&mut self, action: &str) {
        let Some(agent) = self.state.selected_agent() else {
            self.state.status = "no agent selected".into();
            return;
        };
        let (agent_id, name) = (agent.id.clone(), agent.name.clone());
        let result = match action {
            "restart" => {
                self.agents
                    .restart_agent(am::RestartAgentRequest { agent_id })
                    .await
            }
            "stop" => {
                self.agents
                    .stop_agent(am::StopAgentRequest { agent_id })
                    .await
            }
            _ => {
                self.agents
                    .start_agent(am::StartAgentRequest { agent_id })
                    .await
            }
        };
        self.state.status = match result {
            Ok(_) => format!("{action}: {name}"),
            Err(status) => format!("{action} {name} failed: {}", status.message()),
        };
        let _ = self.refresh().await;
    }

    async fn trigger(&mut self) {
        if self.state.focus() != Focus::Workflows {
            self.state.status = "tab to the workflows to trigger one".into();
            return;
        }
        let Some(workflow) = self.state.selected_workflow() else {
            self.state.status = "no workflow selected".into();
            return;
        };
        let (workflow_id, name) = (workflow.id.clone(), workflow.name.clone());
        let result = self
            .workflows
            .trigger_workflow(sched::TriggerWorkflowRequest {
                workflow_id,
                fields: Some(sched::TaskFields {
                    title: "triggered from shepherd top".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        self.state.status = match result {
            Ok(task) => format!("triggered {name}: task {}", task.into_inner().id),
            Err(status) => format!("trigger {name} failed: {}", status.message()),
        };
    }
}

/// "deploy for task T (pending)".
fn approval_line(approval: Option<&shepherd_proto::agentmanager::v1::Approval>) -> String {
    approval
        .map(|a| {
            let state = shepherd_proto::short_name(a.state().as_str_name(), "APPROVAL_STATE_");
            format!(
                "{} for task {} ({state})",
                shepherd_platform::text::visible(&a.tool),
                shepherd_platform::text::visible(&a.task_id)
            )
        })
        .unwrap_or_default()
}
