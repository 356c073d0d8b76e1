//! Shepherd's soak: a backlog drains while the faults of a normal week hit
//! it, and at the end every task is checked from the agents' own record.
//! Not a test (it takes minutes and restarts PostgreSQL); run by hand:
//!
//!   cargo build --release --workspace --bins && target/release/shepherd-soak
//!
//! Scenarios (`--only NAME`, default all):
//! * `scheduler-kills`: 1,500 tasks over 3 workflows; the scheduler is
//!   SIGKILLed 15 times at random moments and started again each time.
//! * `pg-restarts`: 400 tasks; PostgreSQL is restarted 3 times
//!   (`pg_ctlcluster ... restart -m fast`; needs root or the postgres user,
//!   and restarts the server DATABASE_URL points at: do not run it beside
//!   other users of that server).
//! * `pg-outage`: 400 tasks; the services' connections to PostgreSQL are
//!   cut (a TCP proxy) for 30 s while they drain.
//! * `manager-restarts`: 600 tasks; the agent-manager is stopped 6 times
//!   (SIGKILL and SIGTERM alternately) and started again; its agents keep
//!   running and are adopted (live restore).
//! * `failovers`: two replicas; the lease holder is SIGKILLed 4 times
//!   (and started again) while a backlog drains.
//! * `standby`: no-op drain rate of one replica, of one replica with a
//!   standby, and of two active replicas (leases spread), as ratios.
//!
//! Every scenario prints: tasks not in a final state (must be 0), tasks
//! lost (never ran; must be 0), and tasks that ran more than once (each
//! counted; only attempts in flight at a crash may repeat).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shepherd_e2e::{AuthChannel, SeededRng, Stack, StackOptions, lines};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, scheduler_client::SchedulerClient};
use shepherd_testkit::ServiceProcess;

type Client = SchedulerClient<AuthChannel>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut only = None;
    let mut seed = 42u64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--help" | "-h" => {
                println!(
                    "usage: shepherd-soak [--only scheduler-kills|pg-restarts|pg-outage|manager-restarts|failovers|standby] [--seed N]"
                );
                return Ok(());
            }
            "--only" => only = Some(it.next().context("--only needs a value")?),
            "--seed" => seed = it.next().context("--seed needs a value")?.parse()?,
            other => bail!("unknown option {other} (see --help)"),
        }
    }
    let mut rng = SeededRng::new(seed);
    let run = |name: &str| only.as_deref().is_none_or(|only| only == name);
    if run("scheduler-kills") {
        scheduler_kills(&mut rng).await?;
    }
    if run("pg-restarts") {
        pg_restarts(&mut rng).await?;
    }
    if run("pg-outage") {
        pg_outage().await?;
    }
    if run("manager-restarts") {
        manager_restarts(&mut rng).await?;
    }
    if run("failovers") {
        failovers(&mut rng).await?;
    }
    if run("standby") {
        standby().await?;
    }
    Ok(())
}

fn options() -> StackOptions {
    StackOptions {
        startup_window: Duration::from_secs(10),
        reconcile_interval: Duration::from_secs(2),
        log: "error".into(),
        ..StackOptions::default()
    }
}

/// Workflows (one agent each) whose tasks record their title in one file,
/// after `work` (a shell snippet).
async fn recorded_workflows(
    stack: &mut Stack,
    count: usize,
    work: &str,
) -> anyhow::Result<(Vec<String>, std::path::PathBuf)> {
    let file = stack.scratch_file("runs.log");
    let template = format!("{work}; echo {{{{title}}}} >> {}", file.display());
    let mut workflows = Vec::new();
    for n in 0..count {
        let agent = stack
            .create_agent(&format!("agent-{n}"), am::RestartMode::OnFailure)
            .await?;
        let workflow = stack
            .create_workflow(&format!("soak-{n}"), &agent.id, true, &template)
            .await?;
        workflows.push(workflow.id);
    }
    Ok((workflows, file))
}

async fn queue(client: &Client, workflows: &[String], per: usize) -> anyhow::Result<usize> {
    for workflow in workflows {
        for k in 0..per {
            client
                .clone()
                .trigger_workflow(sched::TriggerWorkflowRequest {
                    workflow_id: workflow.clone(),
                    idempotency_key: format!("k{k}"),
                    fields: Some(sched::TaskFields {
                        title: format!("{workflow}/{k}"),
                        ..Default::default()
                    }),
                    timeout: None,
                    priority: 0,
                })
                .await?;
        }
    }
    Ok(workflows.len() * per)
}

/// The verdict every scenario prints: from the scheduler's table and the
/// agents' own record of what ran.
async fn verdict(
    name: &str,
    stack: &Stack,
    file: &Path,
    total: usize,
    drain: Duration,
) -> anyhow::Result<()> {
    let db = stack.db.client().await?;
    let rows = db
        .query(
            "SELECT state, count(*) FROM scheduler.tasks GROUP BY state ORDER BY state",
            &[],
        )
        .await?;
    let states: BTreeMap<String, i64> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let not_final = states.get("pending").copied().unwrap_or(0)
        + states.get("dispatched").copied().unwrap_or(0);
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for line in lines(file) {
        *runs.entry(line).or_insert(0) += 1;
    }
    let lost = total.saturating_sub(runs.len());
    let repeated: usize = runs.values().filter(|&&n| n > 1).count();
    let extra: usize = runs.values().map(|&n| n.saturating_sub(1)).sum();
    println!(
        "[{name}] {total} tasks drained in {:.1} s: states {states:?}; not final: {not_final}; lost: {lost}; ran more than once: {repeated} tasks ({extra} extra runs)",
        drain.as_secs_f64()
    );
    Ok(())
}

async fn scheduler_kills(rng: &mut SeededRng) -> anyhow::Result<()> {
    let mut stack = Stack::start(options()).await?;
    let (workflows, file) = recorded_workflows(&mut stack, 3, "sleep 0.02").await?;
    let total = queue(&stack.workflows.clone(), &workflows, 500).await?;
    let start = Instant::now();
    for kill in 0..15 {
        tokio::time::sleep(rng.millis(300, 1200)).await;
        stack.kill_scheduler().await?;
        stack.start_scheduler().await?;
        eprintln!("scheduler-kills: kill {} done", kill + 1);
    }
    stack.wait_drained(Duration::from_secs(600)).await?;
    verdict("scheduler-kills", &stack, &file, total, start.elapsed()).await
}

async fn pg_restarts(rng: &mut SeededRng) -> anyhow::Result<()> {
    let mut stack = Stack::start(options()).await?;
    let (workflows, file) = recorded_workflows(&mut stack, 2, "sleep 0.05").await?;
    let total = queue(&stack.workflows.clone(), &workflows, 200).await?;
    let start = Instant::now();
    for restart in 0..3 {
        tokio::time::sleep(rng.millis(1000, 3000)).await;
        restart_postgres()?;
        eprintln!("pg-restarts: restart {} done", restart + 1);
    }
    stack.wait_drained(Duration::from_secs(600)).await?;
    verdict("pg-restarts", &stack, &file, total, start.elapsed()).await
}

async fn pg_outage() -> anyhow::Result<()> {
    let mut options = options();
    options.db_proxy = true;
    let mut stack = Stack::start(options).await?;
    let (workflows, file) = recorded_workflows(&mut stack, 2, "sleep 0.05").await?;
    let total = queue(&stack.workflows.clone(), &workflows, 200).await?;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let proxy = stack.db_proxy.as_ref().context("database proxy")?;
    proxy.cut();
    eprintln!("pg-outage: database cut for 30 s");
    tokio::time::sleep(Duration::from_secs(30)).await;
    proxy.restore();
    eprintln!("pg-outage: database back");
    stack.wait_drained(Duration::from_secs(600)).await?;
    verdict("pg-outage", &stack, &file, total, start.elapsed()).await
}

async fn manager_restarts(rng: &mut SeededRng) -> anyhow::Result<()> {
    let mut stack = Stack::start(options()).await?;
    let (workflows, file) = recorded_workflows(&mut stack, 3, "sleep 0.1").await?;
    let total = queue(&stack.workflows.clone(), &workflows, 200).await?;
    let start = Instant::now();
    for restart in 0..6 {
        tokio::time::sleep(rng.millis(500, 2000)).await;
        if restart % 2 == 0 {
            stack.manager.kill().await?;
        } else {
            stack.manager.terminate().await?;
        }
        stack.restart_manager().await?;
        eprintln!("manager-restarts: restart {} done", restart + 1);
    }
    stack.wait_drained(Duration::from_secs(600)).await?;
    let relaunched: i64 = stack
        .db
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM agent_manager.agents WHERE generation > 1",
            &[],
        )
        .await?
        .get(0);
    eprintln!("manager-restarts: agents relaunched instead of adopted: {relaunched}");
    verdict("manager-restarts", &stack, &file, total, start.elapsed()).await
}

fn restart_postgres() -> anyhow::Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .next()
        .context("no PostgreSQL cluster under /etc/postgresql")?;
    let status = std::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "fast",
        ])
        .status()?;
    anyhow::ensure!(status.success(), "pg_ctlcluster restart failed: {status}");
    Ok(())
}

async fn failovers(rng: &mut SeededRng) -> anyhow::Result<()> {
    let mut options = options();
    options.env = vec![("REPLICA_ID", "a".into()), ("LEASE_TTL", "2s".into())];
    let mut stack = Stack::start(options).await?;
    let (workflows, file) = recorded_workflows(&mut stack, 3, "sleep 0.02").await?;
    let (b_process, b) = stack.start_replica(&[("REPLICA_ID", "b".into())]).await?;
    let mut replicas: Vec<(ServiceProcess, Client)> = vec![(b_process, b.clone())];
    let total = queue(&b, &workflows, 300).await?;
    let start = Instant::now();
    for failover in 0..4 {
        tokio::time::sleep(rng.millis(1500, 3000)).await;
        // The holder of most leases is the active replica: kill it, wait
        // for the other to take its workflows over, then start it again
        // (as the new standby).
        let holder = busiest_holder(&stack).await?.unwrap_or_else(|| "a".into());
        let other = if holder == "a" { "b" } else { "a" };
        if holder == "a" {
            stack.kill_scheduler().await?;
        } else {
            replicas[0].0.kill().await?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while busiest_holder(&stack).await?.as_deref() != Some(other) {
            anyhow::ensure!(Instant::now() < deadline, "no takeover from {holder}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if holder == "a" {
            stack.start_scheduler().await?;
        } else {
            replicas[0] = stack
                .start_replica(&[("REPLICA_ID", holder.clone())])
                .await?;
        }
        eprintln!("failovers: killed lease holder {holder} ({})", failover + 1);
    }
    stack.wait_drained(Duration::from_secs(600)).await?;
    verdict("failovers", &stack, &file, total, start.elapsed()).await
}

/// The replica holding the most live leases, if any.
async fn busiest_holder(stack: &Stack) -> anyhow::Result<Option<String>> {
    let db = stack.db.client().await?;
    let row = db
        .query_opt(
            "SELECT owner FROM scheduler.runner_leases WHERE scheduler.lease_live(owner, expires_at)
             GROUP BY owner ORDER BY count(*) DESC LIMIT 1",
            &[],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Drain rate of no-op tasks: one replica, one replica with a standby,
/// two active replicas.
async fn standby() -> anyhow::Result<()> {
    let one = drain_rate(Replicas::One).await?;
    let with_standby = drain_rate(Replicas::WithStandby).await?;
    let two = drain_rate(Replicas::TwoActive).await?;
    println!(
        "[standby] drain of 20 x {} no-op tasks (max concurrency 1): one replica {one:.0} tasks/s; with a standby {with_standby:.0} tasks/s ({:.2}x); two active replicas {two:.0} tasks/s ({:.2}x)",
        per_workflow(),
        with_standby / one,
        two / one
    );
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Replicas {
    One,
    WithStandby,
    TwoActive,
}

async fn drain_rate(replicas: Replicas) -> anyhow::Result<f64> {
    let mut options = options();
    options.env = vec![("REPLICA_ID", "a".into())];
    let mut stack = Stack::start(options).await?;
    let a = stack.workflows.clone();
    let second = match replicas {
        Replicas::One => None,
        Replicas::WithStandby => Some(
            stack
                .start_replica(&[
                    ("REPLICA_ID", "b".into()),
                    ("SCHEDULER_STANDBY", "true".into()),
                ])
                .await?,
        ),
        Replicas::TwoActive => Some(stack.start_replica(&[("REPLICA_ID", "b".into())]).await?),
    };
    let mut clients = vec![a.clone()];
    clients.extend(second.iter().map(|(_, client)| client.clone()));
    let mut workflows = Vec::new();
    for n in 0..20 {
        let agent = stack
            .create_agent(&format!("agent-{n}"), am::RestartMode::Never)
            .await?;
        let workflow = a
            .clone()
            .create_workflow(sched::CreateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    name: format!("noop-{n}"),
                    agent_id: agent.id.clone(),
                    enabled: true,
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        workflows.push(workflow.id);
    }
    // Leases settle (spread over active replicas) before the backlog.
    wait_placed(&clients, &workflows).await?;
    // Queued by one client per workflow at once, so that queueing is not
    // what limits the rate; the clock runs from the first trigger.
    let start = Instant::now();
    let mut queueing = tokio::task::JoinSet::new();
    for workflow in workflows.clone() {
        let a = a.clone();
        queueing.spawn(async move { queue(&a, &[workflow], per_workflow()).await });
    }
    let mut total = 0;
    while let Some(queued) = queueing.join_next().await {
        total += queued??;
    }
    stack.wait_drained(Duration::from_secs(600)).await?;
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let failed: i64 = stack
        .db
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM scheduler.tasks WHERE state <> 'succeeded'",
            &[],
        )
        .await?
        .get(0);
    anyhow::ensure!(failed == 0, "{failed} no-op tasks did not succeed");
    Ok(rate)
}

/// Waits until every workflow runs on exactly one of the replicas.
async fn wait_placed(clients: &[Client], workflows: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut running: BTreeMap<String, usize> = BTreeMap::new();
        for client in clients {
            let runners = client
                .clone()
                .list_runners(sched::ListRunnersRequest::default())
                .await?
                .into_inner()
                .runners;
            for runner in runners {
                if runner.state() == sched::RunnerState::Running {
                    *running.entry(runner.workflow_id).or_insert(0) += 1;
                }
            }
        }
        if workflows.iter().all(|w| running.get(w) == Some(&1)) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "runners not placed: {running:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tasks per workflow of the `standby` drains (`SOAK_STANDBY_TASKS`,
/// default 300).
fn per_workflow() -> usize {
    std::env::var("SOAK_STANDBY_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}
