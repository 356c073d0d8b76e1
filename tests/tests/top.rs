//! `shepherd top` driven through a real terminal (tmux) against real
//! services: it shows the fleet, restarts the selected agent (r), triggers
//! the selected workflow (tab, t), filters (/) and quits (q). Where tmux is
//! missing the test skips and says why (the test command installs it).

use std::process::Command;
use std::time::Duration;

use shepherd_e2e::{Stack, StackOptions};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1 as sched;
use shepherd_testkit::{bin_path, eventually};

/// A tmux server of the test's own, killed (with `shepherd top`) when the
/// test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
            .unwrap_or_default()
    }

    fn keys(&self, keys: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.run(&args).map(drop)
    }

    /// Waits until the screen satisfies `check`.
    async fn wait(&self, what: &str, check: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        let result = eventually(Duration::from_secs(30), what, || async {
            Ok(check(&self.screen()).then_some(()))
        })
        .await;
        if result.is_err() {
            eprintln!("screen:\n{}", self.screen());
        }
        result
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

#[tokio::test]
async fn shepherd_top_shows_the_fleet_live_and_acts_on_keys() -> anyhow::Result<()> {
    if Command::new("tmux").arg("-V").output().is_err() {
        anyhow::ensure!(
            std::env::var_os("SHEPHERD_REQUIRE_TMUX").is_none(),
            "SHEPHERD_REQUIRE_TMUX is set but tmux is missing"
        );
        eprintln!("skipping shepherd top's test: no tmux (Debian: tmux)");
        return Ok(());
    }
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("tui-agent", am::RestartMode::OnFailure)
        .await?;
    let workflow = stack
        .create_workflow("tui-flow", &agent.id, true, "echo {{title}}")
        .await?;
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Running, "")
        .await?;
    // A key and a budget show above the workflows.
    stack
        .workflows
        .clone()
        .put_concurrency_key(sched::PutConcurrencyKeyRequest {
            key: Some(sched::ConcurrencyKey {
                name: "provider:tui".into(),
                max_running: 2,
                ..Default::default()
            }),
        })
        .await?;
    stack
        .workflows
        .clone()
        .put_budget(sched::PutBudgetRequest {
            budget: Some(sched::Budget {
                workflow_id: workflow.id.clone(),
                calendar: sched::CalendarPeriod::Day as i32,
                max_tasks: 1000,
                ..Default::default()
            }),
        })
        .await?;

    let tmux = Tmux {
        socket: format!("shepherd-top-{}", uuid::Uuid::new_v4().simple()),
    };
    let scheduler_url = stack.scheduler_url();
    let command = format!(
        "env SHEPHERD_AGENT_MANAGER_URL={} SHEPHERD_SCHEDULER_URL={scheduler_url} {} top",
        stack.options.url(&stack.manager),
        bin_path("shepherd")?.display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "180",
        "-y",
        "50",
        &command,
    ])?;
    tmux.wait("the agent and its running runner", |screen| {
        screen.contains("tui-agent") && screen.contains("tui-flow") && screen.contains("running")
    })
    .await?;
    tmux.wait("the key and the budget", |screen| {
        screen.contains("keys: provider:tui 0/2") && screen.contains("budgets: 0 of 1 spent")
    })
    .await?;

    // r: restart the selected (only) agent; the screen follows live.
    tmux.keys(&["r"])?;
    eventually(Duration::from_secs(30), "generation 2", || async {
        Ok((stack.agent(&agent.id).await?.generation == 2).then_some(()))
    })
    .await?;
    tmux.wait("the restart among the events", |screen| {
        screen.contains("restarted: restarted on request")
    })
    .await?;

    // tab, t: trigger the selected workflow; its task completes.
    tmux.keys(&["Tab", "t"])?;
    tmux.wait("the trigger's outcome", |screen| {
        screen.contains("triggered tui-flow")
    })
    .await?;
    eventually(Duration::from_secs(30), "the triggered task", || async {
        let tasks = stack.tasks(&workflow.id).await?;
        Ok(tasks
            .iter()
            .any(|t| t.state() == sched::TaskState::Succeeded)
            .then_some(()))
    })
    .await?;
    tmux.wait("the completion among the events", |screen| {
        screen.contains("completed")
    })
    .await?;

    // /: a filter that matches nothing hides the agent's row (its name
    // stays in the workflow's AGENT column).
    let rows = |screen: &str| screen.lines().filter(|l| l.contains("tui-agent")).count();
    tmux.wait("two rows naming the agent", |screen| rows(screen) == 2)
        .await?;
    tmux.keys(&["/", "zzz", "Enter"])?;
    tmux.wait("the filter applied", |screen| {
        screen.contains("(filter: zzz)") && rows(screen) == 1
    })
    .await?;

    // q quits: the session (its only window ran top) ends.
    tmux.keys(&["q"])?;
    eventually(Duration::from_secs(10), "shepherd top to exit", || async {
        Ok(tmux
            .run(&["has-session", "-t", "top"])
            .is_err()
            .then_some(()))
    })
    .await?;
    Ok(())
}
