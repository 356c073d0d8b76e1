//! Agents contained: an agent is a process tree (the agent, its tasks'
//! shells, whatever those start, daemons included), and nothing of a dead
//! agent's tree keeps running: not after a crash (kill -9), a stop, a
//! restart or a delete; and a retry never runs beside its predecessor.
//! Limits (memory, processes) hold for the whole tree, and usage is seen.
//!
//! The manager picks its containment mode itself (cgroup v1 controllers on
//! the CI machine). The tree tests hold in every mode, the subreaper
//! fallback included; the limit tests need a cgroup and skip, saying so,
//! where none is writable.

use std::path::Path;
use std::time::Duration;

use shepherd_e2e::{Stack, StackOptions, WAIT, kill9, lines, test_restart_policy};
use shepherd_proto::agentmanager::v1::{self as am, agent_event};
use shepherd_proto::scheduler::v1 as sched;
use shepherd_testkit::eventually;

/// How a test ends the agent's first generation.
#[derive(Debug, Clone, Copy)]
enum End {
    Kill9,
    Stop,
    Restart,
    Delete,
}

/// A task whose tree holds a daemon that escaped the agent's process group
/// (`setsid`, ticking into `ticks` every 10 ms while it lives) and a plain
/// background `sleep`; each writes its pid, and the attempt's start time
/// goes to `starts`.
fn tree_template(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"echo "$SHEPHERD_TASK_ATTEMPT $(date +%s%N)" >> {dir}/starts
setsid sh -c 'echo $$ > {dir}/escaped.'"$SHEPHERD_TASK_ATTEMPT"'; while :; do echo "'"$SHEPHERD_TASK_ATTEMPT"' $(date +%s%N)" >> {dir}/ticks; sleep 0.01; done' </dev/null >/dev/null 2>&1 &
sleep 1000 </dev/null >/dev/null 2>&1 &
echo $! > {dir}/plain.$SHEPHERD_TASK_ATTEMPT
wait"#
    )
}

/// The live processes of an agent's tree at `generation`: every process
/// inherits the agent's environment, so it carries both markers (a zombie's
/// environment reads empty, so the dead are not counted).
fn tree_of(agent: &str, generation: u64) -> Vec<i32> {
    shepherd_testkit::processes_with_env(&[
        &format!("SHEPHERD_AGENT_ID={agent}"),
        &format!("SHEPHERD_GENERATION={generation}"),
    ])
}

/// The agent's first `AgentExited` event.
async fn first_exit(stack: &Stack, agent: &str) -> anyhow::Result<am::AgentExited> {
    stack
        .agent_events(agent)
        .await?
        .into_iter()
        .find_map(|event| match event.kind {
            Some(agent_event::Kind::Exited(exited)) => Some(exited),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("no AgentExited event for {agent}"))
}

async fn manager_info(stack: &Stack) -> anyhow::Result<am::ManagerInfo> {
    Ok(stack
        .agents
        .clone()
        .get_manager_info(am::GetManagerInfoRequest {})
        .await?
        .into_inner())
}

/// A pid written to `file` by a task.
async fn pid_in(file: &Path) -> anyhow::Result<i32> {
    eventually(WAIT, &format!("a pid in {}", file.display()), || async {
        Ok(lines(file)
            .first()
            .and_then(|line| line.trim().parse().ok()))
    })
    .await
}

/// Runs the tree task, ends the agent's first generation as `end` says,
/// and checks that nothing of that generation's tree is alive the moment
/// the manager is done (the call returned, or the new generation is ready).
async fn nothing_of_the_old_tree_survives(end: End, options: StackOptions) -> anyhow::Result<()> {
    let mut stack = Stack::start(options).await?;
    let agent = stack
        .create_agent("tree", am::RestartMode::OnFailure)
        .await?;
    let dir = stack.scratch_file("tree");
    std::fs::create_dir_all(&dir)?;
    let workflow = stack
        .create_workflow("tree", &agent.id, true, &tree_template(&dir))
        .await?;
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Running, "")
        .await?;
    stack.trigger(&workflow.id, "tree", "tree").await?;
    let escaped = pid_in(&dir.join("escaped.1")).await?;
    let plain = pid_in(&dir.join("plain.1")).await?;
    let agent = stack.agent(&agent.id).await?;
    let old = tree_of(&agent.id, agent.generation);
    assert!(
        old.contains(&escaped) && old.contains(&plain) && old.contains(&agent.pid),
        "the tree is seen: {old:?} holds the agent {}, the escaped {escaped} and the sleep {plain}",
        agent.pid
    );

    let id = || agent.id.clone();
    match end {
        End::Kill9 => {
            kill9(agent.pid)?;
            stack
                .wait_agent_ready(&agent.id, agent.generation + 1)
                .await?;
        }
        End::Stop => {
            stack
                .agents
                .stop_agent(am::StopAgentRequest { agent_id: id() })
                .await?;
        }
        End::Restart => {
            stack.restart_agent(&agent.id).await?;
        }
        End::Delete => {
            stack
                .agents
                .delete_agent(am::DeleteAgentRequest { agent_id: id() })
                .await?;
        }
    }
    let left = tree_of(&agent.id, agent.generation);
    assert!(
        left.is_empty(),
        "after {end:?}, processes of the old tree still run: {left:?} (escaped {escaped}, sleep {plain})"
    );

    if let End::Kill9 = end {
        // The task was in flight: its retry runs on the new generation, and
        // starts only after the last tick of the old tree's daemon.
        let starts = eventually(WAIT, "the retry to start", || async {
            Ok(lines(&dir.join("starts"))
                .iter()
                .find_map(|line| line.strip_prefix("2 ")?.trim().parse::<u128>().ok()))
        })
        .await?;
        let last_old_tick = lines(&dir.join("ticks"))
            .iter()
            .filter_map(|line| line.strip_prefix("1 ")?.trim().parse::<u128>().ok())
            .max()
            .expect("the old daemon ticked");
        assert!(
            last_old_tick < starts,
            "the retry started at {starts} while the old tree still ran (last tick {last_old_tick})"
        );
        let exited = first_exit(&stack, &agent.id).await?;
        assert_eq!(exited.signal, Some(9));
        assert_eq!(exited.reason(), am::ExitReason::Killed);
    }
    Ok(())
}

#[tokio::test]
async fn a_killed_agent_leaves_nothing_and_its_retry_runs_alone() -> anyhow::Result<()> {
    nothing_of_the_old_tree_survives(End::Kill9, StackOptions::default()).await
}

#[tokio::test]
async fn a_stopped_agent_leaves_nothing() -> anyhow::Result<()> {
    nothing_of_the_old_tree_survives(End::Stop, StackOptions::default()).await
}

#[tokio::test]
async fn a_restarted_agent_leaves_nothing() -> anyhow::Result<()> {
    nothing_of_the_old_tree_survives(End::Restart, StackOptions::default()).await
}

#[tokio::test]
async fn a_deleted_agent_leaves_nothing() -> anyhow::Result<()> {
    nothing_of_the_old_tree_survives(End::Delete, StackOptions::default()).await
}

fn with_mode(mode: &str) -> StackOptions {
    StackOptions {
        env: vec![("CONTAINMENT", mode.to_owned())],
        ..StackOptions::default()
    }
}

/// Without cgroups the manager is a child subreaper and finds the tree by
/// its environment: the same guarantees, and limits are refused rather
/// than ignored.
#[tokio::test]
async fn the_subreaper_fallback_also_leaves_nothing_and_refuses_limits() -> anyhow::Result<()> {
    nothing_of_the_old_tree_survives(End::Kill9, with_mode("subreaper")).await?;
    let stack = Stack::start(with_mode("subreaper")).await?;
    let info = manager_info(&stack).await?;
    assert_eq!(info.containment_mode, "subreaper");
    assert!(!info.enforces_memory && !info.enforces_cpu && !info.enforces_processes);
    let refused = stack
        .agents
        .clone()
        .create_agent(am::CreateAgentRequest {
            agent: Some(limited_agent("limited", memory_limit(64 << 20))),
        })
        .await
        .expect_err("a limit nobody enforces is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("memory_bytes") && refused.message().contains("subreaper"),
        "{}",
        refused.message()
    );
    Ok(())
}

/// cgroup v2, where a writable unified hierarchy exists (on the CI machine
/// it is mounted beside the v1 controllers, without controllers: the tree
/// is killed through `cgroup.kill`).
#[tokio::test]
async fn cgroup_v2_also_leaves_nothing() -> anyhow::Result<()> {
    if !v2_writable() {
        eprintln!("skipping: no writable cgroup v2 hierarchy on this machine");
        return Ok(());
    }
    nothing_of_the_old_tree_survives(End::Kill9, with_mode("cgroup-v2")).await
}

fn v2_writable() -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let (Some(mount), Some(path)) = (
        mountinfo
            .lines()
            .find(|line| line.contains(" - cgroup2 "))
            .and_then(|line| line.split(' ').nth(4)),
        own.lines().find_map(|line| line.strip_prefix("0::")),
    ) else {
        return false;
    };
    let probe = Path::new(mount)
        .join(path.trim_start_matches('/'))
        .join(format!("shepherd-probe-{}", std::process::id()));
    let writable = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    writable
}

fn memory_limit(bytes: u64) -> am::ResourceLimits {
    am::ResourceLimits {
        memory_bytes: bytes,
        ..Default::default()
    }
}

fn limited_agent(name: &str, limits: am::ResourceLimits) -> am::Agent {
    am::Agent {
        name: name.to_owned(),
        command: shepherd_testkit::bin_path("shepherd-agent")
            .map(|path| path.display().to_string())
            .unwrap_or_default(),
        restart_policy: Some(test_restart_policy(am::RestartMode::OnFailure)),
        limits: Some(limits),
        ..Default::default()
    }
}

/// The running stack's manager enforces `what`; otherwise the test says
/// why it skips.
async fn enforcing(stack: &Stack, what: fn(&am::ManagerInfo) -> bool) -> anyhow::Result<bool> {
    let info = manager_info(stack).await?;
    if !what(&info) {
        eprintln!(
            "skipping: this machine's containment mode ({}) cannot enforce the limit under test",
            info.containment_mode
        );
    }
    Ok(what(&info))
}

#[tokio::test]
async fn bad_limits_are_invalid_arguments() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    for (limits, field) in [
        (memory_limit(1024), "memory_bytes"),
        (
            am::ResourceLimits {
                cpu_cores: -1.0,
                ..Default::default()
            },
            "cpu_cores",
        ),
        (
            am::ResourceLimits {
                cpu_cores: f64::NAN,
                ..Default::default()
            },
            "cpu_cores",
        ),
    ] {
        let refused = stack
            .agents
            .clone()
            .create_agent(am::CreateAgentRequest {
                agent: Some(limited_agent("bad", limits)),
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{field}");
        assert!(refused.message().contains(field), "{}", refused.message());
    }
    Ok(())
}

/// A 64 MiB agent whose task allocates far more: the whole tree is
/// OOM-killed, AgentExited and GetAgent say so, the agent restarts per its
/// policy and its workflow's runner heals.
#[tokio::test]
async fn an_agent_over_its_memory_limit_is_oom_killed_and_restarted() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    if !enforcing(&stack, |info| info.enforces_memory).await? {
        return Ok(());
    }
    let agent = stack
        .create_agent_with(limited_agent("hungry", memory_limit(64 << 20)))
        .await?;
    assert_eq!(
        agent.limits.as_ref().map(|l| l.memory_bytes),
        Some(64 << 20)
    );
    // Doubles a string until it holds far more than 64 MiB.
    let workflow = stack
        .create_workflow(
            "hungry",
            &agent.id,
            true,
            r#"awk 'BEGIN { s = "x"; while (length(s) < 1024 * 1024 * 1024) s = s s }'"#,
        )
        .await?;
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Running, "")
        .await?;
    stack.trigger(&workflow.id, "eat", "eat").await?;

    stack
        .wait_agent_ready(&agent.id, agent.generation + 1)
        .await?;
    let exited = first_exit(&stack, &agent.id).await?;
    assert_eq!(exited.reason(), am::ExitReason::OomKilled, "{exited:?}");
    let now = stack.agent(&agent.id).await?;
    assert_eq!(now.exit_reason(), am::ExitReason::OomKilled);
    assert!(
        now.generation > agent.generation,
        "restarted per its policy"
    );
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Running, "")
        .await?;
    Ok(())
}

/// A fork bomb in an agent capped at 32 processes: the tree never holds
/// more, the manager keeps answering, and stopping the agent clears it.
#[tokio::test]
async fn a_fork_bomb_is_capped_and_cleared() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    if !enforcing(&stack, |info| info.enforces_processes).await? {
        return Ok(());
    }
    let agent = stack
        .create_agent_with(limited_agent(
            "bomber",
            am::ResourceLimits {
                max_processes: 32,
                ..Default::default()
            },
        ))
        .await?;
    let workflow = stack
        .create_workflow(
            "bomb",
            &agent.id,
            true,
            // bash, whose failed forks do not end the shell: the tree
            // stays at its cap.
            "exec bash -c 'bomb() { bomb & bomb & wait; }; bomb'",
        )
        .await?;
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Running, "")
        .await?;
    stack.trigger(&workflow.id, "bomb", "bomb").await?;

    let mut most = 0;
    let full = eventually(WAIT, "the bomb to fill its cap", || {
        let mut agents = stack.agents.clone();
        let id = agent.id.clone();
        async move {
            let usage = agents
                .get_agent(am::GetAgentRequest { agent_id: id })
                .await?
                .into_inner()
                .usage
                .unwrap_or_default();
            Ok((usage.processes >= 16).then_some(usage.processes))
        }
    })
    .await?;
    most = most.max(full);
    for _ in 0..20 {
        // The manager answers while the bomb runs, and the cap holds.
        let usage = stack.agent(&agent.id).await?.usage.unwrap_or_default();
        most = most.max(usage.processes);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        most <= 32,
        "the tree held {most} processes, over its cap of 32"
    );

    stack
        .agents
        .stop_agent(am::StopAgentRequest {
            agent_id: agent.id.clone(),
        })
        .await?;
    let left = tree_of(&agent.id, agent.generation);
    assert!(left.is_empty(), "the bomb survived the stop: {left:?}");
    assert!(stack.agent(&agent.id).await?.usage.is_none());
    Ok(())
}

/// Usage figures follow what the tree does: CPU time and rate rise while a
/// task burns CPU, memory while it holds memory.
#[tokio::test]
async fn usage_moves_with_the_work() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("busy", am::RestartMode::OnFailure)
        .await?;
    let before = stack
        .agent(&agent.id)
        .await?
        .usage
        .expect("usage of a running agent");
    assert!(before.processes >= 1);
    // 64 MiB held, then a busy loop.
    let workflow = stack
        .create_workflow(
            "busy",
            &agent.id,
            true,
            r#"awk 'BEGIN { s = "x"; while (length(s) < 64 * 1024 * 1024) s = s s; while (1) n++ }'"#,
        )
        .await?;
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Running, "")
        .await?;
    stack.trigger(&workflow.id, "burn", "burn").await?;
    let cpu = |usage: &am::ResourceUsage| {
        usage.cpu_time.map_or(Duration::ZERO, |time| {
            Duration::try_from(time).unwrap_or_default()
        })
    };
    let busy = eventually(WAIT, "usage to rise", || {
        let mut agents = stack.agents.clone();
        let id = agent.id.clone();
        async move {
            let usage = agents
                .get_agent(am::GetAgentRequest { agent_id: id })
                .await?
                .into_inner()
                .usage
                .unwrap_or_default();
            let risen = cpu(&usage) >= cpu(&before) + Duration::from_millis(500)
                && usage.memory_bytes >= before.memory_bytes + (48 << 20)
                && usage.cpu_cores > 0.3
                && usage.processes > before.processes;
            Ok(risen.then_some(usage))
        }
    })
    .await?;
    eprintln!("usage: before {before:?}, busy {busy:?}");
    Ok(())
}
