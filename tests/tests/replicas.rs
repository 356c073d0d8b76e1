//! Two scheduler replicas on one database: each workflow runs on exactly
//! one of them at a time (runner leases with fencing), every task runs
//! once, a workflow disabled through any replica runs on none, and a
//! replica that dies has its workflows taken over.

use std::collections::BTreeMap;
use std::time::Duration;

use shepherd_e2e::{AuthChannel, Stack, StackOptions, WAIT, lines};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{
    self as sched, RunnerState, TaskState, scheduler_client::SchedulerClient,
};
use shepherd_testkit::eventually;

type Client = SchedulerClient<AuthChannel>;

async fn runner_states(
    client: &Client,
    agent: &str,
) -> anyhow::Result<BTreeMap<String, RunnerState>> {
    let runners = client
        .clone()
        .list_runners(sched::ListRunnersRequest {
            agent_id: agent.to_owned(),
        })
        .await?
        .into_inner()
        .runners;
    Ok(runners
        .into_iter()
        .map(|runner| (runner.workflow_id.clone(), runner.state()))
        .collect())
}

/// Waits until every workflow runs on the replica `expect` says, and fails
/// at once if any workflow is ever seen running on both.
async fn wait_placement(
    replicas: &[&Client],
    agent: &str,
    workflows: &[String],
    expect: impl Fn(&[RunnerState]) -> bool,
) -> anyhow::Result<()> {
    eventually(WAIT, "runner placement", || async {
        let mut views = Vec::new();
        for replica in replicas {
            views.push(runner_states(replica, agent).await?);
        }
        let mut settled = true;
        for workflow in workflows {
            let states: Vec<RunnerState> = views
                .iter()
                .map(|view| view.get(workflow).copied().unwrap_or(RunnerState::Stopped))
                .collect();
            let running = states
                .iter()
                .filter(|s| **s == RunnerState::Running)
                .count();
            anyhow::ensure!(running <= 1, "{workflow} runs on two replicas: {states:?}");
            settled &= expect(&states);
        }
        Ok(settled.then_some(()))
    })
    .await
}

async fn trigger_all(
    client: &Client,
    workflows: &[String],
    round: &str,
) -> anyhow::Result<Vec<String>> {
    let mut tasks = Vec::new();
    for (n, workflow) in workflows.iter().enumerate() {
        for k in 0..5 {
            let title = format!("{round}-w{n}-{k}");
            let task = client
                .clone()
                .trigger_workflow(sched::TriggerWorkflowRequest {
                    workflow_id: workflow.clone(),
                    idempotency_key: title.clone(),
                    fields: Some(sched::TaskFields {
                        title,
                        ..Default::default()
                    }),
                    timeout: None,
                    priority: 0,
                })
                .await?
                .into_inner();
            tasks.push(task.id);
        }
    }
    Ok(tasks)
}

/// Every one of `expected` tasks left its line in `file`, and none twice.
fn assert_each_ran_once(file: &std::path::Path, expected: usize) {
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for line in lines(file) {
        *runs.entry(line).or_insert(0) += 1;
    }
    assert_eq!(runs.len(), expected, "every task ran: {runs:?}");
    assert!(
        runs.values().all(|&n| n == 1),
        "no task ran twice: {runs:?}"
    );
}

/// An agent and one enabled workflow of it whose tasks append their title
/// to the returned file (one line per run).
async fn logging_workflow(
    stack: &mut Stack,
    agent: &str,
) -> anyhow::Result<(am::Agent, sched::Workflow, std::path::PathBuf)> {
    let agent = stack.create_agent(agent, am::RestartMode::Never).await?;
    let file = stack.scratch_file("ran.log");
    let template = format!("echo {{{{title}}}} >> {}", file.display());
    let workflow = stack
        .create_workflow("w", &agent.id, true, &template)
        .await?;
    Ok((agent, workflow, file))
}

#[tokio::test]
async fn replicas_run_each_workflow_once_and_take_over_from_a_dead_one() -> anyhow::Result<()> {
    let options = StackOptions {
        reconcile_interval: Duration::from_millis(300),
        env: vec![("REPLICA_ID", "a".into()), ("LEASE_TTL", "2s".into())],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options).await?;
    let (_b_process, b) = stack.start_replica(&[("REPLICA_ID", "b".into())]).await?;
    let a = stack.workflows.clone();
    let agent = stack.create_agent("shared", am::RestartMode::Never).await?;
    let file = stack.scratch_file("runs.log");
    let template = format!("echo {{{{title}}}} >> {}", file.display());

    // Half the workflows are created through each replica, so each starts
    // some runners first; the other replica's level pass adds standbys.
    let mut workflows = Vec::new();
    for n in 0..4 {
        let client = if n % 2 == 0 { &a } else { &b };
        let workflow = client
            .clone()
            .create_workflow(sched::CreateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    name: format!("shared-{n}"),
                    agent_id: agent.id.clone(),
                    enabled: true,
                    prompt_template: template.clone(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        workflows.push(workflow.id);
    }
    wait_placement(&[&a, &b], &agent.id, &workflows, |states| {
        states.contains(&RunnerState::Running) && states.contains(&RunnerState::Standby)
    })
    .await?;

    // A replica that has started no runners of its own still shows who
    // runs each workflow.
    let (mut c_process, c) = stack
        .start_replica(&[
            ("REPLICA_ID", "c".into()),
            ("DISABLE_LEVEL_RECONCILE", "true".into()),
        ])
        .await?;
    wait_placement(&[&c], &agent.id, &workflows, |states| {
        states == [RunnerState::Standby]
    })
    .await?;
    c_process.kill().await?;

    let first = trigger_all(&a, &workflows, "first").await?;
    stack.wait_tasks(&first, TaskState::Succeeded).await?;

    // Disabled through b, whichever replica runs it: no replica runs it,
    // and a task queued for it waits.
    let parked = &workflows[0];
    b.clone()
        .update_workflow(sched::UpdateWorkflowRequest {
            workflow: Some(sched::Workflow {
                id: parked.clone(),
                enabled: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
        })
        .await?;
    wait_placement(
        &[&a, &b],
        &agent.id,
        std::slice::from_ref(parked),
        |states| states.iter().all(|state| *state == RunnerState::Stopped),
    )
    .await?;
    let waiting = trigger_all(&b, std::slice::from_ref(parked), "parked").await?;
    let workflows = &workflows[1..];

    // Replica a dies without releasing anything: b takes over once a's
    // leases expire.
    stack.kill_scheduler().await?;
    wait_placement(&[&b], &agent.id, workflows, |states| {
        states == [RunnerState::Running]
    })
    .await?;
    let second = trigger_all(&b, workflows, "second").await?;
    // From here on the stack's scheduler client is b.
    stack.workflows = b.clone();
    stack.wait_tasks(&second, TaskState::Succeeded).await?;

    assert_each_ran_once(&file, 20 + 15);
    for id in waiting {
        let task = b
            .clone()
            .get_task(sched::GetTaskRequest { task_id: id })
            .await?
            .into_inner();
        assert_eq!(task.state(), TaskState::Pending, "{task:?}");
    }
    Ok(())
}

#[tokio::test]
async fn leases_spread_over_the_live_replicas() -> anyhow::Result<()> {
    let options = StackOptions {
        reconcile_interval: Duration::from_millis(300),
        env: vec![("REPLICA_ID", "a".into()), ("LEASE_TTL", "1s".into())],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options).await?;
    let a = stack.workflows.clone();
    let agent = stack.create_agent("shared", am::RestartMode::Never).await?;
    // Every workflow starts on a, the only replica.
    let mut workflows = Vec::new();
    for n in 0..16 {
        let workflow = stack
            .create_workflow(&format!("spread-{n}"), &agent.id, true, "")
            .await?;
        workflows.push(workflow.id);
    }
    wait_placement(&[&a], &agent.id, &workflows, |states| {
        states == [RunnerState::Running]
    })
    .await?;

    // A second replica joins: a hands over the workflows b is preferred
    // for (rendezvous hashing; 16 workflows all on one side has odds of
    // 1 in 32,768), and each workflow runs on exactly one of them.
    // Leases only move from a to b here, and a shows a runner standing by
    // before it frees the lease: so b, the taker, is asked first; a
    // workflow RUNNING on b then is no longer RUNNING on a a moment later.
    // (Asked the other way round, two answers a moment apart could show a
    // hand-over in between as a workflow on both.)
    let (_b_process, b) = stack.start_replica(&[("REPLICA_ID", "b".into())]).await?;
    eventually(WAIT, "leases on both replicas", || async {
        let on_b = runner_states(&b, &agent.id).await?;
        let on_a = runner_states(&a, &agent.id).await?;
        let mut count = [0usize; 2];
        for workflow in &workflows {
            let running = [on_a.get(workflow), on_b.get(workflow)]
                .map(|state| state == Some(&RunnerState::Running));
            anyhow::ensure!(
                !(running[0] && running[1]),
                "{workflow} runs on both replicas"
            );
            for (side, running) in running.iter().enumerate() {
                count[side] += usize::from(*running);
            }
        }
        Ok((count[0] > 0 && count[1] > 0 && count[0] + count[1] == workflows.len()).then_some(()))
    })
    .await?;

    // Work still runs exactly once, wherever it lands.
    let file = stack.scratch_file("runs.log");
    let recorder = stack
        .create_workflow(
            "recorder",
            &agent.id,
            true,
            &format!("echo {{{{title}}}} >> {}", file.display()),
        )
        .await?;
    let tasks = trigger_all(&b, std::slice::from_ref(&recorder.id), "spread").await?;
    stack.wait_tasks(&tasks, TaskState::Succeeded).await?;
    assert_eq!(lines(&file).len(), 5);
    Ok(())
}

#[tokio::test]
async fn a_hot_standby_runs_nothing_until_the_active_replica_dies() -> anyhow::Result<()> {
    let options = StackOptions {
        reconcile_interval: Duration::from_millis(300),
        env: vec![("REPLICA_ID", "a".into()), ("LEASE_TTL", "1s".into())],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options).await?;
    let a = stack.workflows.clone();
    let (_standby, s) = stack
        .start_replica(&[
            ("REPLICA_ID", "s".into()),
            ("SCHEDULER_STANDBY", "true".into()),
        ])
        .await?;
    let agent = stack.create_agent("shared", am::RestartMode::Never).await?;
    let mut workflows = Vec::new();
    for n in 0..8 {
        let workflow = stack
            .create_workflow(&format!("w{n}"), &agent.id, true, "")
            .await?;
        workflows.push(workflow.id);
    }
    wait_placement(&[&a, &s], &agent.id, &workflows, |states| {
        states == [RunnerState::Running, RunnerState::Standby]
    })
    .await?;
    // Several lease periods later (the active replica has renewed its
    // membership, which keeps its leases, past two more TTLs) the standby
    // still runs nothing.
    let db = stack.db.client().await?;
    let expiry = || async {
        let row = db
            .query_one(
                "SELECT extract(epoch FROM expires_at)::float8 FROM scheduler.replicas WHERE id = 'a'",
                &[],
            )
            .await?;
        anyhow::Ok(row.get::<_, f64>(0))
    };
    let first = expiry().await?;
    eventually(WAIT, "two more lease periods", || async {
        Ok((expiry().await? >= first + 2.0).then_some(()))
    })
    .await?;
    wait_placement(&[&a, &s], &agent.id, &workflows, |states| {
        states == [RunnerState::Running, RunnerState::Standby]
    })
    .await?;

    stack.kill_scheduler().await?;
    wait_placement(&[&s], &agent.id, &workflows, |states| {
        states == [RunnerState::Running]
    })
    .await?;
    Ok(())
}

/// A task triggered through one replica, for a workflow whose lease the
/// other holds, is woken there by the database's notification (the harness
/// sets the safety poll far beyond the test's deadline).
#[tokio::test]
async fn work_triggered_through_one_replica_wakes_the_holder_on_another() -> anyhow::Result<()> {
    let options = StackOptions {
        // Leases renewed only every 200 s: a renewal never wakes the runner
        // within the test, only a notification can.
        env: vec![("REPLICA_ID", "a".into()), ("LEASE_TTL", "600s".into())],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options).await?;
    let a = stack.workflows.clone();
    let (_standby, s) = stack
        .start_replica(&[
            ("REPLICA_ID", "s".into()),
            ("SCHEDULER_STANDBY", "true".into()),
        ])
        .await?;
    let (agent, workflow, file) = logging_workflow(&mut stack, "shared").await?;
    wait_placement(
        &[&a, &s],
        &agent.id,
        std::slice::from_ref(&workflow.id),
        |states| states == [RunnerState::Running, RunnerState::Standby],
    )
    .await?;

    let tasks = trigger_all(&s, std::slice::from_ref(&workflow.id), "first").await?;
    stack.wait_tasks(&tasks, TaskState::Succeeded).await?;

    // The listening connections die (as in a database failover): a
    // notification sent meanwhile is lost, and the re-listen finds the work.
    let db = stack.db.client().await?;
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        &[&shepherd_platform::notify::APPLICATION_NAME],
    )
    .await?;
    let more = trigger_all(&s, std::slice::from_ref(&workflow.id), "second").await?;
    stack.wait_tasks(&more, TaskState::Succeeded).await?;
    assert_eq!(lines(&file).len(), 10, "every task ran once");
    Ok(())
}

/// While the wake-up listener cannot listen, a finished task still wakes
/// its runner for the next one: the consumer that records the outcome wakes
/// it directly (with the listener connected it leaves that to the commit's
/// notification). The listener never connects here (failpoint), and the
/// safety poll and level passes are far beyond the test's deadline, so a
/// chain of tasks at max concurrency 1 moves only through those wake-ups.
#[tokio::test]
async fn finished_tasks_wake_their_runner_while_the_listener_is_deaf() -> anyhow::Result<()> {
    let options = StackOptions {
        reconcile_interval: Duration::from_secs(600),
        env: vec![
            ("SHEPHERD_FAILPOINTS", "scheduler.listener_deaf=skip".into()),
            ("RUNNER_POLL_INTERVAL", "600s".into()),
        ],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options).await?;
    let (_agent, workflow, file) = logging_workflow(&mut stack, "serial").await?;
    // Queued at once: each trigger's own wake-up comes while the first task
    // runs, so every later task waits for a finished one to wake the runner.
    let tasks = trigger_all(&stack.workflows, std::slice::from_ref(&workflow.id), "deaf").await?;
    stack.wait_tasks(&tasks, TaskState::Succeeded).await?;
    assert_eq!(lines(&file).len(), 5, "every task ran once");

    // A deaf listener does not hold up a graceful stop.
    let scheduler = stack.scheduler.as_mut().expect("the scheduler runs");
    assert_eq!(scheduler.terminate().await?, Some(0), "a clean exit");
    Ok(())
}

/// A replica whose process dies is found gone through its session lock,
/// not waited for until its lease expires: with a ten-minute lease TTL, the
/// other replica runs its workflows within `WAIT` (thirty seconds), and
/// every task still runs once. A replica that is only stopped (SIGSTOP)
/// keeps its lock and so its workflows, and once continued it goes on
/// running them, each on one replica.
#[tokio::test]
async fn a_dead_replica_is_found_gone_through_its_session_not_its_lease() -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let options = StackOptions {
        // Each replica's level pass gives it a standby runner of every
        // workflow (in production every RECONCILE_INTERVAL, 10 s).
        reconcile_interval: Duration::from_millis(300),
        env: vec![("REPLICA_ID", "a".into()), ("LEASE_TTL", "600s".into())],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options).await?;
    let (b_process, b) = stack.start_replica(&[("REPLICA_ID", "b".into())]).await?;
    let a = stack.workflows.clone();
    let (agent, workflow, file) = logging_workflow(&mut stack, "shared").await?;
    let workflows = vec![workflow.id.clone()];
    // Whichever replica took the workflow is the one stopped, then killed.
    wait_placement(&[&a, &b], &agent.id, &workflows, |states| {
        states.contains(&RunnerState::Running) && states.contains(&RunnerState::Standby)
    })
    .await?;
    let on_a = runner_states(&a, &agent.id).await?.get(&workflow.id) == Some(&RunnerState::Running);

    // Stopped, the holder keeps its workflow: no takeover while its
    // session lives, however long the other replica looks (a second).
    let holder_pid = if on_a {
        stack.scheduler.as_ref().and_then(|s| s.pid())
    } else {
        b_process.pid()
    };
    let holder_pid = Pid::from_raw(holder_pid.expect("the holder runs"));
    let survivor = if on_a { &b } else { &a };
    kill(holder_pid, Signal::SIGSTOP)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        assert_ne!(
            runner_states(survivor, &agent.id).await?.get(&workflow.id),
            Some(&RunnerState::Running),
            "a stopped replica's workflow moved before its lease expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill(holder_pid, Signal::SIGCONT)?;
    let first = trigger_all(&a, &workflows, "first").await?;
    stack.wait_tasks(&first, TaskState::Succeeded).await?;

    // Killed, it is found gone within WAIT: the survivor runs it.
    kill(holder_pid, Signal::SIGKILL)?;
    wait_placement(&[survivor], &agent.id, &workflows, |states| {
        states == [RunnerState::Running]
    })
    .await?;
    let second = trigger_all(survivor, &workflows, "second").await?;
    stack.workflows = survivor.clone();
    stack.wait_tasks(&second, TaskState::Succeeded).await?;
    assert_each_ran_once(&file, 10);
    Ok(())
}

/// A replica that lives on after its session lock's connection died (a
/// database failover, a cut connection) is ended by the other at once: the
/// workflow moves, the replica that lost its lock gives its leases up
/// rather than run beside the new holder, joins again with a new session,
/// and every task runs once, never on two replicas at a time.
#[tokio::test]
async fn a_replica_that_loses_its_session_gives_its_workflows_up_and_joins_again()
-> anyhow::Result<()> {
    let options = StackOptions {
        reconcile_interval: Duration::from_millis(300),
        env: vec![("REPLICA_ID", "a".into()), ("LEASE_TTL", "600s".into())],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options).await?;
    let (_b_process, b) = stack.start_replica(&[("REPLICA_ID", "b".into())]).await?;
    let a = stack.workflows.clone();
    let (agent, workflow, file) = logging_workflow(&mut stack, "shared").await?;
    let workflows = vec![workflow.id.clone()];
    wait_placement(&[&a, &b], &agent.id, &workflows, |states| {
        states.contains(&RunnerState::Running) && states.contains(&RunnerState::Standby)
    })
    .await?;
    let first = trigger_all(&a, &workflows, "first").await?;
    stack.wait_tasks(&first, TaskState::Succeeded).await?;

    // Both replicas' lock sessions die at once; each takes its lock again.
    let db = stack.db.client().await?;
    let ended = db
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = $1 AND datname = current_database()",
            &[&shepherd_platform::session_lock::APPLICATION_NAME],
        )
        .await?;
    assert_eq!(ended, 2, "one lock session per replica");
    eventually(WAIT, "both replicas holding their locks again", || async {
        let held: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = $1 AND datname = current_database()",
                &[&shepherd_platform::session_lock::APPLICATION_NAME],
            )
            .await?
            .get(0);
        Ok((held == 2).then_some(()))
    })
    .await?;
    wait_placement(&[&a, &b], &agent.id, &workflows, |states| {
        states.contains(&RunnerState::Running)
    })
    .await?;
    let second = trigger_all(&b, &workflows, "second").await?;
    stack.wait_tasks(&second, TaskState::Succeeded).await?;
    assert_each_ran_once(&file, 10);
    Ok(())
}
