//! How `shepherd top` draws its state.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph, Row, Table, TableState};

use super::state::{Focus, State};

use shepherd_proto::short_name as short;

fn bytes(count: u64) -> String {
    if count < 1024 * 1024 {
        format!("{}K", count / 1024)
    } else {
        format!("{:.1}M", count as f64 / (1024.0 * 1024.0))
    }
}

pub(super) fn draw(frame: &mut Frame, state: &mut State) {
    let [header, agents, workflows, events, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Percentage(40),
        Constraint::Percentage(30),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let ready = state
        .agents
        .iter()
        .filter(|a| a.status() == shepherd_proto::agentmanager::v1::AgentStatus::Ready)
        .count();
    let rate = state.tasks_per_second();
    let link = if state.connected {
        "live"
    } else {
        "DISCONNECTED"
    };
    frame.render_widget(
        Paragraph::new(format!(
            "shepherd top   agents {ready}/{} ready   workflows {}   tasks/s {rate:.1}   events: {link}",
            state.agents.len(),
            state.workflows.len()
        )),
        header,
    );

    let selected = Style::default().add_modifier(Modifier::REVERSED);
    let rows: Vec<Row> = state
        .visible_agents()
        .into_iter()
        .map(|agent| {
            Row::new(vec![
                agent.name.clone(),
                short(agent.status().as_str_name(), "AGENT_STATUS_"),
                agent.generation.to_string(),
                agent.restart_count.to_string(),
                if agent.pid > 0 {
                    agent.pid.to_string()
                } else {
                    "-".into()
                },
                agent
                    .usage
                    .as_ref()
                    .map_or("-".into(), |u| format!("{:.2}", u.cpu_cores)),
                agent
                    .usage
                    .as_ref()
                    .map_or("-".into(), |u| bytes(u.memory_bytes)),
                agent.status_message.clone(),
            ])
        })
        .collect();
    let title = if state.filter.is_empty() {
        " Agents ".to_owned()
    } else {
        format!(" Agents (filter: {}) ", state.filter)
    };
    let table = Table::new(
        rows,
        [
            Constraint::Length(20),
            Constraint::Length(9),
            Constraint::Length(4),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Min(10),
        ],
    )
    .header(Row::new([
        "NAME", "STATUS", "GEN", "RESTARTS", "PID", "CPU", "MEM", "MESSAGE",
    ]))
    .block(Block::default().borders(Borders::ALL).title(title))
    .row_highlight_style(selected);
    let mut table_state = TableState::default();
    if state.focus() == Focus::Agents {
        table_state.select(Some(state.selected_agent));
    }
    frame.render_stateful_widget(table, agents, &mut table_state);

    let rows: Vec<Row> = state
        .workflows
        .iter()
        .map(|(workflow, runner)| {
            Row::new(vec![
                workflow.name.clone(),
                state.name_of(&workflow.agent_id),
                if workflow.enabled { "yes" } else { "no" }.into(),
                runner.as_ref().map_or("-".into(), |r| {
                    short(r.state().as_str_name(), "RUNNER_STATE_")
                }),
                runner
                    .as_ref()
                    .map(|r| r.reason.clone())
                    .unwrap_or_default(),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(20),
            Constraint::Length(16),
            Constraint::Length(8),
            Constraint::Length(18),
            Constraint::Min(10),
        ],
    )
    .header(Row::new([
        "WORKFLOW", "AGENT", "ENABLED", "RUNNER", "REASON",
    ]))
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(workflows_title(state)),
    )
    .row_highlight_style(selected);
    let mut table_state = TableState::default();
    if state.focus() == Focus::Workflows {
        table_state.select(Some(state.selected_workflow));
    }
    frame.render_stateful_widget(table, workflows, &mut table_state);

    let items: Vec<ListItem> = state
        .events
        .iter()
        .map(|line| ListItem::new(Line::from(line.as_str())))
        .collect();
    frame.render_widget(
        List::new(items).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Recent events "),
        ),
        events,
    );

    let help = if state.editing {
        format!("filter: {}_   (Enter apply, Esc clear)", state.filter)
    } else {
        format!(
            "q quit  tab switch  ↑↓ select  r restart  s stop  S start  t trigger  / filter   {}",
            state.status
        )
    };
    frame.render_widget(Paragraph::new(help), footer);
}

/// " Workflows   keys: provider:x 2/3 (1 waiting)   budgets: 1 of 2 spent ".
fn workflows_title(state: &State) -> String {
    let mut title = String::from(" Workflows ");
    if !state.keys.is_empty() {
        let keys: Vec<String> = state
            .keys
            .iter()
            .map(|key| {
                let waiting = match key.waiting {
                    0 => String::new(),
                    n => format!(" ({n} waiting)"),
                };
                format!("{} {}/{}{waiting}", key.name, key.running, key.max_running)
            })
            .collect();
        title += &format!("  keys: {} ", keys.join(", "));
    }
    if !state.budgets.is_empty() {
        let spent = state
            .budgets
            .iter()
            .filter(|budget| !budget.exhausted.is_empty())
            .count();
        title += &format!("  budgets: {spent} of {} spent ", state.budgets.len());
    }
    title
}
