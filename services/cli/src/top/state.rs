//! What `shepherd top` shows, apart from how: the fleet as last listed, the
//! recent events, the task rate, the selection and the filter.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1 as sched;

/// Recent events kept.
const EVENTS: usize = 200;
/// Window of the tasks/s figure.
const RATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Focus {
    Agents,
    Workflows,
}

#[derive(Default)]
pub(super) struct State {
    pub agents: Vec<am::Agent>,
    pub workflows: Vec<(sched::Workflow, Option<sched::Runner>)>,
    /// Concurrency keys and budgets, for the workflows' title line.
    pub keys: Vec<sched::ConcurrencyKey>,
    pub budgets: Vec<sched::Budget>,
    pub events: VecDeque<String>,
    completions: VecDeque<Instant>,
    pub selected_agent: usize,
    pub selected_workflow: usize,
    pub focus: Option<Focus>,
    /// Agents shown: name or a label containing it.
    pub filter: String,
    /// Typing a filter.
    pub editing: bool,
    /// The last action's outcome, or an error.
    pub status: String,
    /// The event stream is live.
    pub connected: bool,
}

impl State {
    pub(super) fn focus(&self) -> Focus {
        self.focus.unwrap_or(Focus::Agents)
    }

    pub(super) fn visible_agents(&self) -> Vec<&am::Agent> {
        let filter = self.filter.to_lowercase();
        self.agents
            .iter()
            .filter(|agent| {
                filter.is_empty()
                    || agent.name.to_lowercase().contains(&filter)
                    || agent
                        .labels
                        .iter()
                        .any(|(k, v)| format!("{k}={v}").to_lowercase().contains(&filter))
            })
            .collect()
    }

    pub(super) fn selected_agent(&self) -> Option<&am::Agent> {
        self.visible_agents().get(self.selected_agent).copied()
    }

    pub(super) fn selected_workflow(&self) -> Option<&sched::Workflow> {
        self.workflows
            .get(self.selected_workflow)
            .map(|(workflow, _)| workflow)
    }

    pub(super) fn name_of(&self, agent_id: &str) -> String {
        self.agents
            .iter()
            .find(|agent| agent.id == agent_id)
            .map_or_else(|| agent_id.chars().take(8).collect(), |a| a.name.clone())
    }

    /// Moves the selection of the focused list.
    pub(super) fn step(&mut self, down: bool) {
        let agents = self.visible_agents().len();
        let (index, len) = match self.focus() {
            Focus::Agents => (&mut self.selected_agent, agents),
            Focus::Workflows => (&mut self.selected_workflow, self.workflows.len()),
        };
        if len == 0 {
            *index = 0;
        } else if down {
            *index = (*index + 1).min(len - 1);
        } else {
            *index = index.saturating_sub(1);
        }
    }

    pub(super) fn toggle_focus(&mut self) {
        self.focus = Some(match self.focus() {
            Focus::Agents => Focus::Workflows,
            Focus::Workflows => Focus::Agents,
        });
    }

    /// Keeps selections inside the lists after a refresh or a filter.
    pub(super) fn clamp(&mut self) {
        let agents = self.visible_agents().len();
        self.selected_agent = self.selected_agent.min(agents.saturating_sub(1));
        self.selected_workflow = self
            .selected_workflow
            .min(self.workflows.len().saturating_sub(1));
    }

    pub(super) fn push_event(&mut self, line: String, task_completed: bool) {
        if self.events.len() == EVENTS {
            self.events.pop_back();
        }
        self.events.push_front(line);
        if task_completed {
            self.completions.push_back(Instant::now());
        }
    }

    /// Tasks completed per second over the last RATE_WINDOW.
    pub(super) fn tasks_per_second(&mut self) -> f64 {
        let now = Instant::now();
        while self
            .completions
            .front()
            .is_some_and(|at| now.duration_since(*at) > RATE_WINDOW)
        {
            self.completions.pop_front();
        }
        self.completions.len() as f64 / RATE_WINDOW.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, label: (&str, &str)) -> am::Agent {
        am::Agent {
            name: name.into(),
            labels: [(label.0.to_owned(), label.1.to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_filter_matches_names_and_labels_and_the_selection_stays_inside() {
        let mut state = State {
            agents: vec![
                agent("alpha", ("team", "red")),
                agent("beta", ("team", "blue")),
            ],
            selected_agent: 1,
            ..Default::default()
        };
        state.filter = "red".into();
        state.clamp();
        assert_eq!(state.visible_agents().len(), 1);
        assert_eq!(
            state.selected_agent().map(|a| a.name.as_str()),
            Some("alpha")
        );
        state.filter = "BET".into();
        assert_eq!(
            state.selected_agent().map(|a| a.name.as_str()),
            Some("beta")
        );
        state.step(true);
        assert_eq!(state.selected_agent, 0, "one row: nowhere to go");
    }

    #[test]
    fn the_rate_counts_recent_completions_only() {
        let mut state = State::default();
        for _ in 0..5 {
            state.push_event("done".into(), true);
        }
        state.push_event("ready".into(), false);
        assert!((state.tasks_per_second() - 0.5).abs() < f64::EPSILON);
        assert_eq!(state.events.len(), 6);
    }
}
