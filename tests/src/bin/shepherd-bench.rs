//! Shepherd's benchmark: real services, real agents, real PostgreSQL.
//!
//! (a) recovery latency: time from `RestartAgent` returning until every
//!     runner of the agent is RUNNING again, for 1 agent × 3 workflows
//!     (repeated, p50/p99) and for 200 agents × 5 workflows restarted at once;
//! (b) throughput: tasks dispatched and completed per second with 50 agents
//!     running a no-op task, also as a ratio to the baseline;
//! baseline: a pgbench-like loop on the same PostgreSQL in the same run (8
//!     connections, each committing one insert plus one update), the yard
//!     stick every throughput is divided by; and, where PostgreSQL's own
//!     `pgbench` is installed, `pgbench -N` (8 clients, 5 s) as a second
//!     reference: the figure the targets of issue 10 were first set
//!     against (its transaction has one more round trip than the yard stick);
//! db-floor: the database work of a task alone, with no service running:
//!     the rows a task writes (the scheduler's claim and outcome updates
//!     with their change-log rows, the manager's delivery insert and
//!     completion update, the completion event) in the simplest statements,
//!     committed as the services commit them (4 transactions a wave), in waves
//!     of 50 and of 11 tasks (about what max concurrency 8 and 1 give), from
//!     one connection: PostgreSQL CPU per task, the floor under (b);
//! idle: N enabled workflows with no tasks: scheduler and PostgreSQL CPU
//!     (from /proc) and scheduler memory per runner;
//! idle-agents: --agents N agents READY with no work (default 200; issue 37
//!     asks about 1,000): agent-manager CPU and memory per agent, and the
//!     time to create them all at once (16 callers);
//! keys: (b) without keys, then with one concurrency key (a limit that never
//!     binds) on every workflow, in the same run: what claiming under a key
//!     costs, as the ratio of the two;
//! failover: two scheduler replicas share 10 workflows; the one holding
//!     most is killed with -9 (--rounds 10 times, restarted after each):
//!     kill -> every workflow RUNNING on the survivor, p50/p99 (the
//!     survivor's own RUNNING stamps); then one SIGSTOP of the holder past
//!     the lease: the takeover, against LEASE_TTL, and no workflow ever
//!     running on both once it is continued;
//! latency: trigger -> dispatched -> completed at low load, p50/p99 (from
//!     the database's own timestamps);
//! containment: what containing an agent costs: per launch (prepare the
//!     cgroup with limits, enter it, kill and remove it after the exit),
//!     as the difference to a plain spawn over --launches launches, and per
//!     usage read; in the detected mode and in the subreaper fallback.
//!
//! Build in release and run (PostgreSQL from DATABASE_URL or 127.0.0.1):
//!   cargo build --release --workspace --bins && target/release/shepherd-bench
//! Options: --rounds N (a, one agent; default 30), --agents N (a, many;
//! default 200), --tasks N (b; default 20000), --concurrency N[,N...] (b,
//! per workflow, each in turn; default 1,8), --workflows N (idle; default 10000), --only
//! a1|a2|a3|b|keys|failover|baseline|db-floor|idle|idle-agents|latency|containment (a3: one agent with
//! --workflows workflows restarted), --launches N (containment; default 1000).

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use shepherd_agent_manager::containment::{
    Cell, Containment, LimitKind, ModeChoice, ResourceLimits,
};
use shepherd_e2e::{AuthChannel, Stack, StackOptions, kill9};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{
    self as sched, RunnerState, scheduler_client::SchedulerClient,
};

const USAGE: &str = "usage: shepherd-bench [--only a1|a2|a3|b|keys|failover|baseline|db-floor|idle|idle-agents|latency|containment] [--rounds N] [--agents N] [--tasks N] [--concurrency N[,N...]] [--workflows N] [--launches N]
  a1: runners of one restarted agent back (p50/p99 over --rounds, default 30)
  a2: runners of --agents agents (default 200) x 5 workflows restarted at once
  a3: runners of one agent with --workflows workflows (default 10000) back after its restart
  b:  throughput of no-op tasks over 50 agents (--tasks, default 20000; --concurrency per workflow: each in turn, default 1,8),
      as tasks/s and as a ratio to the baseline (measured first, in the same run)
  keys: b without keys and b with one key on every workflow, each --concurrency in turn, and their ratio
  baseline: 8 connections committing one insert plus one update each, for 5 s
      (and pgbench -N with 8 clients for 5 s, if pgbench is installed)
  failover: kill -9 of the replica holding most of 10 workflows -> all running on the other, p50/p99 over 10 kills; then one SIGSTOP past the lease
  db-floor: PostgreSQL CPU per task for the rows a task writes alone (no services), in waves of 50 and 11
  idle-agents: --agents agents created at once (16 callers), then READY and idle: manager CPU and memory per agent
  idle: --workflows enabled workflows (default 10000) with no tasks: CPU and memory
  latency: trigger -> dispatched -> completed, p50/p99 over 200 sequential tasks
  containment: cost of containing an agent per launch (over --launches, default 1000) and per usage read";

struct Args {
    rounds: usize,
    agents: usize,
    tasks: usize,
    concurrency: Vec<u32>,
    workflows: usize,
    launches: usize,
    only: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        rounds: 30,
        agents: 200,
        tasks: 20_000,
        concurrency: vec![1, 8],
        workflows: 10_000,
        launches: 1_000,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rounds" => args.rounds = value.parse()?,
            "--agents" => args.agents = value.parse()?,
            "--tasks" => args.tasks = value.parse()?,
            "--concurrency" => {
                args.concurrency = value.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            "--workflows" => args.workflows = value.parse()?,
            "--launches" => args.launches = value.parse()?,
            "--only" => args.only = Some(value),
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let run = |name: &str| args.only.as_deref().is_none_or(|only| only == name);
    if run("a1") {
        one_agent(args.rounds).await?;
    }
    if run("a2") {
        many_agents(args.agents, 5).await?;
    }
    if run("a3") {
        many_agents(1, args.workflows).await?;
    }
    let mut yard_sticks = YardSticks::default();
    if run("b") || run("baseline") {
        yard_sticks = YardSticks {
            baseline: Some(baseline().await?),
            pgbench: pgbench_simple_update().await?,
        };
    }
    if run("b") {
        for &concurrency in &args.concurrency {
            throughput(50, args.tasks, concurrency, &yard_sticks, false).await?;
        }
    }
    if run("keys") {
        for &concurrency in &args.concurrency {
            let plain = throughput(50, args.tasks, concurrency, &yard_sticks, false).await?;
            let keyed = throughput(50, args.tasks, concurrency, &yard_sticks, true).await?;
            println!(
                "(keys) max concurrency {concurrency}: one key on every workflow runs at {:.2}x the throughput without keys ({keyed:.0} vs {plain:.0} tasks/s, same run)",
                keyed / plain
            );
        }
    }
    if run("failover") {
        failover(10).await?;
    }
    if run("db-floor") {
        db_floor().await?;
    }
    if run("latency") {
        latency(200).await?;
    }
    if run("containment") {
        containment(ModeChoice::Auto, args.launches).await?;
        containment(ModeChoice::Subreaper, args.launches).await?;
    }
    if run("idle") {
        idle(args.workflows).await?;
    }
    if run("idle-agents") {
        idle_agents(args.agents).await?;
    }
    Ok(())
}

fn options() -> StackOptions {
    StackOptions {
        startup_window: Duration::from_millis(300),
        reconcile_interval: Duration::from_secs(10),
        level: true,
        // The services' logs (to stderr), quiet unless asked for.
        log: std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "error".into()),
        ..StackOptions::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Polls ListRunners until `expected` runners match `wanted`. Returns
/// the latest `since` among them: when the last of them entered its state,
/// by the scheduler's clock. Timing by that stamp rather than by when a
/// poll saw it keeps the polling (itself load: ListRunners of 10,000
/// workflows) out of the figure, so a large fleet can be polled gently.
async fn wait_runners(
    client: &SchedulerClient<AuthChannel>,
    expected: usize,
    poll: Duration,
    what: &str,
    wanted: impl Fn(&sched::Runner) -> bool,
) -> anyhow::Result<SystemTime> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runners = runners_of(client).await?;
        let matching: Vec<&sched::Runner> = runners.iter().filter(|r| wanted(r)).collect();
        if matching.len() >= expected {
            return matching
                .iter()
                .filter_map(|r| r.since.and_then(|t| SystemTime::try_from(t).ok()))
                .max()
                .context("no runner says since when");
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {expected} runners {what} after 60s",
                matching.len()
            );
        }
        tokio::time::sleep(poll).await;
    }
}

/// Every runner RUNNING again since `after`; returns when the last one
/// got there.
async fn wait_all_running(
    stack: &Stack,
    expected: usize,
    after: SystemTime,
    poll: Duration,
) -> anyhow::Result<SystemTime> {
    wait_runners(&stack.workflows, expected, poll, "running", |r| {
        r.state() == RunnerState::Running
            && r.since
                .and_then(|t| SystemTime::try_from(t).ok())
                .is_some_and(|t| t >= after)
    })
    .await
}

/// How long from `from` to `to` (zero if `to` is earlier).
fn between(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or_default()
}

async fn wait_all_stopped(stack: &Stack, expected: usize) -> anyhow::Result<()> {
    wait_runners(
        &stack.workflows,
        expected,
        Duration::from_millis(20),
        "stopped",
        |r| r.state() == RunnerState::Stopped && r.reason.contains("agent not ready"),
    )
    .await
    .map(drop)
}

async fn setup(
    stack: &mut Stack,
    agents: usize,
    workflows: usize,
) -> anyhow::Result<Vec<am::Agent>> {
    let mut created = Vec::with_capacity(agents);
    for a in 0..agents {
        let agent = stack
            .create_agent(&format!("agent-{a}"), am::RestartMode::Never)
            .await?;
        for w in 0..workflows {
            stack
                .create_workflow(&format!("wf-{a}-{w}"), &agent.id, true, "")
                .await?;
        }
        created.push(agent);
    }
    // The ANALYZE autovacuum would have run after so many new workflows
    // (this machine's PostgreSQL has autovacuum off): without it the
    // services keep plans made for the empty tables of a new database.
    stack.db.client().await?.batch_execute("ANALYZE").await?;
    wait_all_running(
        stack,
        agents * workflows,
        SystemTime::UNIX_EPOCH,
        Duration::from_millis(20),
    )
    .await?;
    Ok(created)
}

async fn crash_all(stack: &mut Stack, agents: &[am::Agent], runners: usize) -> anyhow::Result<()> {
    for agent in agents {
        let pid = stack.agent(&agent.id).await?.pid;
        if pid > 0 {
            kill9(pid)?;
        }
    }
    wait_all_stopped(stack, runners).await
}

async fn one_agent(rounds: usize) -> anyhow::Result<()> {
    let mut stack = Stack::start(options()).await?;
    let agents = setup(&mut stack, 1, 3).await?;
    let mut samples = Vec::with_capacity(rounds);
    let mut from_call = Vec::with_capacity(rounds);
    let mut calls = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        crash_all(&mut stack, &agents, 3).await?;
        let restarted_at = SystemTime::now();
        stack.restart_agent(&agents[0].id).await?;
        let returned = SystemTime::now();
        let done = wait_all_running(&stack, 3, restarted_at, Duration::from_millis(1)).await?;
        samples.push(between(returned, done));
        from_call.push(between(restarted_at, done));
        calls.push(between(restarted_at, returned));
    }
    for samples in [&mut samples, &mut from_call, &mut calls] {
        samples.sort();
    }
    let spread = |samples: &[Duration]| -> anyhow::Result<String> {
        Ok(format!(
            "p50 {} p99 {} max {}",
            ms(percentile(samples, 0.5)),
            ms(percentile(samples, 0.99)),
            ms(*samples.last().context("no samples")?)
        ))
    };
    println!(
        "(a) 1 agent x 3 workflows, {rounds} restarts: RestartAgent called -> all runners running: {}; the call itself: {}; RestartAgent returned -> all runners running: {}",
        spread(&from_call)?,
        spread(&calls)?,
        spread(&samples)?
    );
    Ok(())
}

async fn many_agents(agents: usize, workflows: usize) -> anyhow::Result<()> {
    let mut stack = Stack::start(options()).await?;
    let setup_start = Instant::now();
    let created = setup(&mut stack, agents, workflows).await?;
    eprintln!(
        "set up {agents} agents x {workflows} workflows in {:?}",
        setup_start.elapsed()
    );
    let runners = agents * workflows;
    crash_all(&mut stack, &created, runners).await?;

    let restarted_at = SystemTime::now();
    let mut calls = Vec::new();
    for agent in &created {
        let mut client = stack.agents.clone();
        let id = agent.id.clone();
        calls.push(tokio::spawn(async move {
            client
                .restart_agent(am::RestartAgentRequest { agent_id: id })
                .await
                .map(|_| SystemTime::now())
        }));
    }
    let mut returns = Vec::with_capacity(calls.len());
    for call in calls {
        returns.push(call.await??);
    }
    let last_return = returns.iter().max().copied().context("no calls")?;
    let done = wait_all_running(&stack, runners, restarted_at, Duration::from_millis(100)).await?;
    println!(
        "(a) {agents} agents x {workflows} workflows restarted at once: all {runners} runners running {} after the first RestartAgent call, {} after the last returned (restart calls took {}; timed by the runners' own RUNNING stamps)",
        ms(between(restarted_at, done)),
        ms(between(last_return, done)),
        ms(between(restarted_at, last_return))
    );
    Ok(())
}

/// What throughputs are divided by, both measured in the same run.
#[derive(Default)]
struct YardSticks {
    /// The in-run baseline loop, TPS.
    baseline: Option<f64>,
    /// `pgbench -N`, TPS (None when pgbench is not installed).
    pgbench: Option<f64>,
}

impl YardSticks {
    /// " = 0.50x baseline (0.80x pgbench -N)" for `rate` tasks/s.
    fn ratios(&self, rate: f64) -> String {
        let mut text = String::new();
        if let Some(tps) = self.baseline {
            text.push_str(&format!(" = {:.2}x baseline", rate / tps));
        }
        if let Some(tps) = self.pgbench {
            text.push_str(&format!(" ({:.2}x pgbench -N)", rate / tps));
        }
        text
    }
}

/// A concurrency key every workflow of a throughput run names, with a
/// limit that never binds: what claiming under a key costs.
const BENCH_KEY: &str = "bench:shared";

/// Runs (b) and returns its rate (tasks/s). With `keyed`, every workflow
/// names `BENCH_KEY`.
async fn throughput(
    agents: usize,
    tasks: usize,
    concurrency: u32,
    yard_sticks: &YardSticks,
    keyed: bool,
) -> anyhow::Result<f64> {
    let mut stack = Stack::start(options()).await?;
    if keyed {
        stack
            .workflows
            .put_concurrency_key(sched::PutConcurrencyKeyRequest {
                key: Some(sched::ConcurrencyKey {
                    name: BENCH_KEY.into(),
                    max_running: 100_000,
                    ..Default::default()
                }),
            })
            .await?;
    }
    let mut workflows = Vec::new();
    for a in 0..agents {
        let agent = stack
            .create_agent(&format!("worker-{a}"), am::RestartMode::Never)
            .await?;
        let workflow = stack
            .workflows
            .create_workflow(sched::CreateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    name: format!("noop-{a}"),
                    agent_id: agent.id.clone(),
                    enabled: false,
                    max_concurrency: concurrency,
                    concurrency_keys: if keyed {
                        vec![BENCH_KEY.into()]
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        workflows.push(workflow.id);
    }
    // Queue everything first (disabled workflows store tasks), then enable
    // all. A warm-up share runs first and is not timed: it fills the
    // tables the way a running system has them, and is followed by the
    // ANALYZE that autovacuum would have run by then (this machine's
    // PostgreSQL has autovacuum off, and plans made for the empty tables
    // of a new database would otherwise stay in use).
    let per = tasks / agents;
    let warm_per = (per / 10).max(1);
    let mut triggers = tokio::task::JoinSet::new();
    for workflow in &workflows {
        let mut client = stack.workflows.clone();
        let workflow = workflow.clone();
        triggers.spawn(async move {
            for i in 0..(warm_per + per) {
                client
                    .trigger_workflow(sched::TriggerWorkflowRequest {
                        workflow_id: workflow.clone(),
                        idempotency_key: format!("t{i}"),
                        fields: None,
                        timeout: None,
                        priority: 0,
                    })
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = triggers.join_next().await {
        result??;
    }
    let total = per * agents;
    let warm = (warm_per * agents) as i64;
    let db = stack.db.client().await?;
    for workflow in &workflows {
        stack
            .workflows
            .update_workflow(sched::UpdateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    id: workflow.clone(),
                    enabled: true,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["enabled".into()],
                }),
            })
            .await?;
    }
    let succeeded = async || -> anyhow::Result<i64> {
        Ok(db
            .query_one(
                "SELECT count(*) FROM scheduler.tasks WHERE state = 'succeeded'",
                &[],
            )
            .await?
            .get(0))
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while succeeded().await? < warm {
        if Instant::now() > deadline {
            bail!("the warm-up did not finish within 600s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.batch_execute("ANALYZE").await?;
    // Timed by the database's clock: from here to the last task's end.
    let row = db
        .query_one(
            "SELECT clock_timestamp(), (SELECT count(*) FROM scheduler.tasks WHERE state = 'succeeded')",
            &[],
        )
        .await?;
    let (started, done_at_start): (SystemTime, i64) = (row.get(0), row.get(1));
    let cpu_before = CpuUse::read(&stack);
    loop {
        // Cheap while being measured: stops at the first open task.
        let open: bool = db
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM scheduler.tasks WHERE state IN ('pending', 'dispatched'))",
                &[],
            )
            .await?
            .get(0);
        if !open {
            break;
        }
        if Instant::now() > deadline {
            bail!("tasks still open after 600s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cpu = CpuUse::read(&stack);
    let ended: SystemTime = db
        .query_one("SELECT max(updated_at) FROM scheduler.tasks", &[])
        .await?
        .get(0);
    let elapsed = ended.duration_since(started).unwrap_or_default();
    let timed = (total as i64 + warm - done_at_start).max(0) as usize;
    let failed: i64 = db
        .query_one(
            "SELECT count(*) FROM scheduler.tasks WHERE state <> 'succeeded'",
            &[],
        )
        .await?
        .get(0);
    // Exactly once, from the agent-manager's side: every task was delivered
    // once (no redelivery) and completed once.
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM agent_manager.tasks WHERE attempt = 1 AND state = 'completed'),
                    (SELECT count(*) FROM agent_manager.events WHERE kind = 'task_completed')",
            &[],
        )
        .await?;
    let (delivered_once, completions): (i64, i64) = (row.get(0), row.get(1));
    let rate = timed as f64 / elapsed.as_secs_f64();
    let ratio = yard_sticks.ratios(rate);
    let keys = if keyed {
        format!(", every workflow naming key {BENCH_KEY}")
    } else {
        String::new()
    };
    println!(
        "(b) {agents} agents, no-op tasks, max concurrency {concurrency}/workflow{keys}: {timed} tasks dispatched and completed in {:.2} s = {rate:.0} tasks/s{ratio} (after {} warm-up tasks; of all {}: {failed} not succeeded, {delivered_once} delivered exactly once, {completions} completion events)",
        elapsed.as_secs_f64(),
        done_at_start,
        total as i64 + warm,
    );
    println!(
        "    CPU per task: {}",
        cpu.per_task_since(&cpu_before, timed)
    );
    Ok(rate)
}

/// CPU ticks of each part of a stack, per process, at one moment (from
/// /proc). The difference of two is a steadier figure than throughput on a
/// machine whose speed varies by the minute (throughput is capped by the
/// CPU, so less CPU per task is more tasks/s).
struct CpuUse(Vec<(&'static str, std::collections::HashMap<i32, u64>)>);

impl CpuUse {
    fn read(stack: &Stack) -> Self {
        let ticks = |pids: Vec<i32>| {
            pids.into_iter()
                .map(|pid| (pid, cpu_ticks(&[pid])))
                .collect()
        };
        let scheduler = stack.scheduler.as_ref().and_then(|s| s.pid());
        Self(vec![
            ("PostgreSQL", ticks(processes_named("postgres"))),
            (
                "agent-manager",
                ticks(stack.manager.pid().into_iter().collect()),
            ),
            ("scheduler", ticks(scheduler.into_iter().collect())),
            ("agents", ticks(processes_named("shepherd-agent"))),
        ])
    }

    /// Microseconds of CPU per task since `before`, by part and in all. A
    /// process that started meanwhile counts whole; one that ended
    /// meanwhile is not counted.
    fn per_task_since(&self, before: &Self, tasks: usize) -> String {
        let us = |ticks: u64| ticks as f64 * 10_000.0 / tasks.max(1) as f64; // 100 ticks/s
        let mut total = 0;
        let mut line = Vec::new();
        for ((part, after), (_, before)) in self.0.iter().zip(&before.0) {
            let ticks: u64 = after
                .iter()
                .map(|(pid, ticks)| ticks.saturating_sub(before.get(pid).copied().unwrap_or(0)))
                .sum();
            total += ticks;
            line.push(format!("{part} {:.0} us", us(ticks)));
        }
        format!("{}; in all {:.0} us", line.join(", "), us(total))
    }
}

/// The yard stick: what this PostgreSQL commits per second for 8 clients
/// each doing one insert plus one update per transaction (like `pgbench -N`
/// in spirit), measured in the same run as the figures divided by it.
async fn baseline() -> anyhow::Result<f64> {
    let db = shepherd_testkit::TestDb::create().await?;
    let setup = db.client().await?;
    setup
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 100000) g;
             CREATE TABLE history (id bigserial PRIMARY KEY, account int, delta int, at timestamptz DEFAULT now());",
        )
        .await?;
    let run_for = Duration::from_secs(5);
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..8u32 {
        let client = db.client().await?;
        clients.spawn(async move {
            let insert = client
                .prepare("INSERT INTO history (account, delta) VALUES ($1, $2)")
                .await?;
            let update = client
                .prepare("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
                .await?;
            let start = Instant::now();
            let mut done = 0u64;
            let mut account = 1 + (c as i32) * 12_500;
            while start.elapsed() < run_for {
                account = account % 100_000 + 1;
                client.batch_execute("BEGIN").await?;
                client.execute(&insert, &[&account, &1i32]).await?;
                client.execute(&update, &[&account, &1i64]).await?;
                client.batch_execute("COMMIT").await?;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = 0u64;
    while let Some(done) = clients.join_next().await {
        total += done??;
    }
    let tps = total as f64 / run_for.as_secs_f64();
    println!("baseline: 8 connections, one insert + one update per transaction: {tps:.0} TPS");
    Ok(tps)
}

/// The floor under (b): what PostgreSQL spends per task on the rows a task
/// writes, with no service running (both are started once, to create their
/// schemas, and stopped). The statements are the simplest that write those
/// rows (the services' own do more: leases, room, retries), committed as
/// the services commit them (claim; delivery; completion and its event;
/// outcome), a wave of tasks per statement.
async fn db_floor() -> anyhow::Result<()> {
    let mut stack = Stack::start(options()).await?;
    stack.manager.terminate().await?;
    if let Some(scheduler) = stack.scheduler.as_mut() {
        scheduler.terminate().await?;
    }
    let mut db = stack.db.client().await?;
    // 50 disabled workflows of 400 pending tasks each; task ids are
    // "<workflow>:k<n>" as the scheduler makes them.
    db.batch_execute(
        "INSERT INTO scheduler.workflows (id, name, agent_id, enabled, max_concurrency, trigger,
                                          prompt_template, max_attempts)
         SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid, 'floor-' || g,
                gen_random_uuid(), false, 1, '{}', '', 1
         FROM generate_series(1, 50) g;
         INSERT INTO scheduler.tasks (id, workflow_id, idempotency_key, state, prompt, fields)
         SELECT w.id || ':k' || n, w.id, 'k' || n, 'pending', '', '{}'
         FROM scheduler.workflows w, generate_series(1, 400) n;",
    )
    .await?;
    db.batch_execute("VACUUM ANALYZE").await?;
    let statements = FloorStatements::prepare(&db).await?;
    // An untimed warm-up fills the manager's tables and the logs the way a
    // running system has them, then the ANALYZE autovacuum would have run
    // (plans made for the empty tables would scan them whole).
    for key in 1..=40 {
        statements.wave(&mut db, 50, key).await?;
    }
    db.batch_execute("ANALYZE").await?;
    // Waves of 50 take keys 41-200 of every workflow, waves of 11 keys
    // 201-400 of the first 11: no task is taken twice.
    for (wave, keys) in [(50u32, 41..=200u32), (11, 201..=400)] {
        let expected = wave as usize * keys.clone().count();
        let before = CpuUse::read(&stack);
        let mut tasks = 0;
        for key in keys {
            tasks += statements.wave(&mut db, wave, key).await?;
        }
        if tasks != expected {
            bail!("db-floor: {tasks} tasks claimed in waves of {wave}, expected {expected}");
        }
        println!(
            "db-floor: {tasks} tasks in waves of {wave}, 4 transactions per wave, no services: {}",
            CpuUse::read(&stack).per_task_since(&before, tasks)
        );
    }
    Ok(())
}

/// The statements of `db_floor`, one per row a task writes.
struct FloorStatements {
    claim: tokio_postgres::Statement,
    deliver: tokio_postgres::Statement,
    complete: tokio_postgres::Statement,
    event: tokio_postgres::Statement,
    outcome: tokio_postgres::Statement,
}

impl FloorStatements {
    async fn prepare(db: &tokio_postgres::Client) -> anyhow::Result<Self> {
        Ok(Self {
            claim: db
                .prepare(
                    "UPDATE scheduler.tasks SET state = 'dispatched', attempts = attempts + 1,
                         updated_at = now(), dispatched_at = now()
                     WHERE id = ANY($1) AND state = 'pending'",
                )
                .await?,
            deliver: db
                .prepare(
                    "INSERT INTO agent_manager.tasks (task_id, agent_id, session_id, generation, state, attempt)
                     SELECT id, agent, agent, 1, 'delivered', 1
                     FROM UNNEST($1::text[], $2::uuid[]) AS v(id, agent)",
                )
                .await?,
            complete: db
                .prepare(
                    "UPDATE agent_manager.tasks SET state = 'completed', outcome = 'succeeded', updated_at = now()
                     WHERE task_id = ANY($1) AND state = 'delivered'",
                )
                .await?,
            event: db
                .prepare(
                    "WITH counter AS (
                         UPDATE agent_manager.event_log_state SET last_seq = last_seq + cardinality($1::uuid[])
                         RETURNING last_seq - cardinality($1::uuid[]) AS before)
                     INSERT INTO agent_manager.events (seq, agent_id, kind, payload)
                     SELECT counter.before + v.n, v.agent, 'task_completed', '\\x0a00'::bytea
                     FROM counter, UNNEST($1::uuid[]) WITH ORDINALITY AS v(agent, n)",
                )
                .await?,
            outcome: db
                .prepare(
                    "UPDATE scheduler.tasks SET state = 'succeeded', updated_at = now()
                     WHERE id = ANY($1) AND state = 'dispatched'",
                )
                .await?,
        })
    }

    /// Task `k<key>` of each of the first `wave` workflows, from claim to
    /// outcome, a statement per step for the whole wave; how many it claimed.
    async fn wave(
        &self,
        db: &mut tokio_postgres::Client,
        wave: u32,
        key: u32,
    ) -> anyhow::Result<usize> {
        let workflows: Vec<uuid::Uuid> = (1..=wave)
            .map(|w| uuid::Uuid::from_u128(u128::from(w)))
            .collect();
        let ids: Vec<String> = workflows.iter().map(|w| format!("{w}:k{key}")).collect();
        let claimed = db.execute(&self.claim, &[&ids]).await?;
        db.execute(&self.deliver, &[&ids, &workflows]).await?;
        // The manager records a report and its event in one transaction.
        let report = db.transaction().await?;
        report.execute(&self.complete, &[&ids]).await?;
        report.execute(&self.event, &[&workflows]).await?;
        report.commit().await?;
        db.execute(&self.outcome, &[&ids]).await?;
        Ok(claimed as usize)
    }
}

/// PostgreSQL's own `pgbench -N` ("simple-update": BEGIN; UPDATE an
/// account; SELECT its balance; INSERT a history row; END) with 8 clients
/// for 5 s on a database of its own; None when pgbench is not installed.
/// The throughput targets of issue 10 were first set as multiples of this
/// figure; the in-run baseline does one round trip fewer per transaction
/// and so commits more per second on the same server.
async fn pgbench_simple_update() -> anyhow::Result<Option<f64>> {
    let Some(pgbench) = pgbench_binary() else {
        println!("pgbench -N: skipped (pgbench is not installed)");
        return Ok(None);
    };
    let db = shepherd_testkit::TestDb::create().await?;
    let run = async |args: &[&str]| -> anyhow::Result<String> {
        let out = tokio::process::Command::new(&pgbench)
            .args(args)
            .arg(&db.url)
            .kill_on_drop(true)
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "pgbench {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    run(&["-i", "-q"]).await?;
    let report = run(&["-N", "-c", "8", "-j", "2", "-T", "5"]).await?;
    let tps = report
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse::<f64>().ok())
        .with_context(|| format!("no tps line in pgbench's report:\n{report}"))?;
    println!("pgbench -N: 8 clients, 2 threads, 5 s: {tps:.0} TPS");
    Ok(Some(tps))
}

/// `pgbench` on PATH, else the newest PostgreSQL's under /usr/lib/postgresql.
fn pgbench_binary() -> Option<std::path::PathBuf> {
    shepherd_testkit::on_path("pgbench").or_else(|| {
        Some(shepherd_testkit::cluster::newest_bin_dir_with("pgbench")?.join("pgbench"))
    })
}

/// Trigger -> dispatched -> completed at low load: one task at a time,
/// timed by the database's own clock (created, dispatched, finished).
async fn latency(tasks: usize) -> anyhow::Result<()> {
    let mut stack = Stack::start(options()).await?;
    let agent = stack
        .create_agent("latency", am::RestartMode::Never)
        .await?;
    let workflow = stack
        .create_workflow("latency", &agent.id, true, "")
        .await?;
    stack
        .wait_runner(&workflow.id, RunnerState::Running, "")
        .await?;
    let db = stack.db.client().await?;
    for i in 0..tasks {
        let task = stack.trigger(&workflow.id, &format!("t{i}"), "").await?;
        stack
            .wait_tasks(std::slice::from_ref(&task.id), sched::TaskState::Succeeded)
            .await?;
    }
    let rows = db
        .query(
            "SELECT extract(epoch FROM dispatched_at - created_at)::float8,
                    extract(epoch FROM updated_at - created_at)::float8
             FROM scheduler.tasks WHERE state = 'succeeded'",
            &[],
        )
        .await?;
    let mut dispatched: Vec<Duration> = rows
        .iter()
        .map(|row| Duration::from_secs_f64(row.get::<_, f64>(0).max(0.0)))
        .collect();
    let mut completed: Vec<Duration> = rows
        .iter()
        .map(|row| Duration::from_secs_f64(row.get::<_, f64>(1).max(0.0)))
        .collect();
    dispatched.sort();
    completed.sort();
    println!(
        "latency: {} sequential no-op tasks: trigger -> dispatched p50 {} p99 {}; trigger -> completed p50 {} p99 {}",
        rows.len(),
        ms(percentile(&dispatched, 0.5)),
        ms(percentile(&dispatched, 0.99)),
        ms(percentile(&completed, 0.5)),
        ms(percentile(&completed, 0.99)),
    );
    Ok(())
}

/// Spawns `program` plainly or into `cell` (entered between fork and exec,
/// as the manager does).
fn spawn_in(
    cell: Option<&Cell>,
    program: &str,
    args: &[&str],
    agent: uuid::Uuid,
) -> anyhow::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("SHEPHERD_AGENT_ID", agent.to_string());
    let files = match cell {
        Some(cell) => cell.enter_on_exec(&mut command)?,
        None => Vec::new(),
    };
    let child = command.spawn()?;
    drop(files);
    Ok(child)
}

/// A short-lived process, spawned plainly or into `cell`; its pid.
async fn spawn_true(cell: Option<&Cell>, agent: uuid::Uuid) -> anyhow::Result<i32> {
    let mut child = spawn_in(cell, "/bin/true", &[], agent)?;
    let pid = child.id().map_or(0, |pid| pid as i32);
    child.wait().await?;
    Ok(pid)
}

/// The cost of containment per launch and per usage read.
async fn containment(mode: ModeChoice, launches: usize) -> anyhow::Result<()> {
    let parent = format!("shepherd-bench-{}", std::process::id());
    let containment = Containment::start(mode, &parent, ResourceLimits::default())?;
    let limits = ResourceLimits {
        memory_bytes: containment.enforces(LimitKind::Memory).then_some(256 << 20),
        cpu_millicores: containment.enforces(LimitKind::Cpu).then_some(1000),
        max_processes: containment.enforces(LimitKind::Processes).then_some(64),
    };
    let agent = uuid::Uuid::now_v7();

    let started = Instant::now();
    for _ in 0..launches {
        spawn_true(None, agent).await?;
    }
    let plain = started.elapsed();
    let started = Instant::now();
    for _ in 0..launches {
        let cell = containment.prepare(agent, "bench", limits).await?;
        let pid = spawn_true(Some(&cell), agent).await?;
        cell.clear(pid).await;
    }
    let contained = started.elapsed();
    let per = |total: Duration| total.as_secs_f64() * 1000.0 / launches as f64;

    // Usage reads of a running tree.
    let cell = containment.prepare(agent, "bench", limits).await?;
    let mut child = spawn_in(Some(&cell), "sleep", &["30"], agent)?;
    let pid = child.id().map_or(0, |pid| pid as i32);
    let reads = 2_000;
    let started = Instant::now();
    let mut seen = 0;
    for _ in 0..reads {
        seen += containment.usage(agent).map_or(0, |usage| usage.processes);
    }
    let read = started.elapsed();
    child.start_kill()?;
    child.wait().await?;
    cell.clear(pid).await;
    shepherd_testkit::clear_cgroups(&parent);
    println!(
        "containment ({}): {launches} launches of /bin/true: plain {:.3} ms each, contained {:.3} ms each (limits {limits:?}) = {:.3} ms of containment per launch; usage read {:.1} us each over {reads} reads ({} processes seen per read)",
        containment.mode().as_str(),
        per(plain),
        per(contained),
        per(contained) - per(plain),
        read.as_secs_f64() * 1e6 / reads as f64,
        seen / reads as u32,
    );
    Ok(())
}

/// N enabled workflows of one agent, no tasks: what they cost at rest.
async fn idle(workflows: usize) -> anyhow::Result<()> {
    let mut stack = Stack::start(options()).await?;
    let agent = stack.create_agent("idle", am::RestartMode::Never).await?;
    let scheduler = stack
        .scheduler
        .as_ref()
        .and_then(|s| s.pid())
        .context("scheduler pid")?;
    let rss_before = rss_bytes(scheduler);
    let mut creators = tokio::task::JoinSet::new();
    let per_creator = workflows.div_ceil(8);
    for c in 0..8 {
        let mut client = stack.workflows.clone();
        let agent = agent.id.clone();
        let range = (c * per_creator)..((c + 1) * per_creator).min(workflows);
        creators.spawn(async move {
            for w in range {
                client
                    .create_workflow(sched::CreateWorkflowRequest {
                        workflow: Some(sched::Workflow {
                            name: format!("idle-{w}"),
                            agent_id: agent.clone(),
                            // Enabled below, all at once, without API
                            // traffic: so that the memory measured is the
                            // runners', not the creation calls' leftovers.
                            enabled: false,
                            ..Default::default()
                        }),
                    })
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = creators.join_next().await {
        result??;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_created = rss_bytes(scheduler);
    // The level pass starts the runners; each takes its lease.
    let db = stack.db.client().await?;
    db.execute("UPDATE scheduler.workflows SET enabled = true", &[])
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let held: i64 = db
            .query_one(
                "SELECT count(*) FROM scheduler.runner_leases WHERE expires_at = 'infinity'",
                &[],
            )
            .await?
            .get(0);
        if held as usize >= workflows {
            break;
        }
        if Instant::now() > deadline {
            bail!("{held} of {workflows} runners took their lease within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let start-up work (lease acquisitions, first settle passes) finish.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let window = Duration::from_secs(10);
    let (sched_before, pg_before) = (
        cpu_ticks(&[scheduler]),
        cpu_ticks(&processes_named("postgres")),
    );
    tokio::time::sleep(window).await;
    let (sched_after, pg_after) = (
        cpu_ticks(&[scheduler]),
        cpu_ticks(&processes_named("postgres")),
    );
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let percent = |before: u64, after: u64| {
        after.saturating_sub(before) as f64 / ticks_per_sec / window.as_secs_f64() * 100.0
    };
    let rss = rss_bytes(scheduler);
    println!(
        "idle: {workflows} enabled workflows, no tasks, over {:?}: scheduler {:.1}% CPU, PostgreSQL {:.1}% CPU (of one core; total {:.1}%); scheduler RSS {:.1} MiB ({:.1} MiB before the workflows, {:.1} MiB with them created but disabled) = {:.2} KiB per idle runner ({:.2} KiB per workflow and runner)",
        window,
        percent(sched_before, sched_after),
        percent(pg_before, pg_after),
        percent(sched_before + pg_before, sched_after + pg_after),
        rss as f64 / 1024.0 / 1024.0,
        rss_before as f64 / 1024.0 / 1024.0,
        rss_created as f64 / 1024.0 / 1024.0,
        rss.saturating_sub(rss_created) as f64 / 1024.0 / workflows as f64,
        rss.saturating_sub(rss_before) as f64 / 1024.0 / workflows as f64,
    );
    Ok(())
}

/// utime + stime of the processes, in clock ticks (/proc/<pid>/stat 14, 15).
fn cpu_ticks(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // fields[0] is field 3, so fields 14 and 15 are [11] and [12].
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// Every process on this machine whose command name is `comm`.
fn processes_named(comm: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim() == comm)
        })
        .collect()
}

fn rss_bytes(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

/// How many of `workflows` workflows run on `a`, once each runs on one of
/// `a` and `b` and stands by on the other.
async fn placement(
    a: &SchedulerClient<AuthChannel>,
    b: &SchedulerClient<AuthChannel>,
    workflows: usize,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (on_a, on_b) = (runners_of(a).await?, runners_of(b).await?);
        let running = |runners: &[sched::Runner]| {
            runners
                .iter()
                .filter(|r| r.state() == RunnerState::Running)
                .count()
        };
        let standing_by = |runners: &[sched::Runner]| {
            runners
                .iter()
                .filter(|r| r.state() == RunnerState::Standby)
                .count()
        };
        let (ra, rb) = (running(&on_a), running(&on_b));
        if ra + rb == workflows && standing_by(&on_a) == rb && standing_by(&on_b) == ra {
            return Ok(ra);
        }
        if Instant::now() > deadline {
            bail!("workflows not placed after 60 s: {ra} running on a, {rb} on b");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn runners_of(client: &SchedulerClient<AuthChannel>) -> anyhow::Result<Vec<sched::Runner>> {
    Ok(client
        .clone()
        .list_runners(sched::ListRunnersRequest::default())
        .await?
        .into_inner()
        .runners)
}

/// Polls `client` until `workflows` runners run there; returns when the
/// last of them started running (its own stamp).
async fn all_running_on(
    client: &SchedulerClient<AuthChannel>,
    workflows: usize,
) -> anyhow::Result<SystemTime> {
    wait_runners(
        client,
        workflows,
        Duration::from_millis(5),
        "running",
        |r| r.state() == RunnerState::Running,
    )
    .await
}

async fn failover(rounds: usize) -> anyhow::Result<()> {
    const WORKFLOWS: usize = 10;
    let mut options = options();
    // Each replica's level pass gives it a standby runner of every workflow.
    options.reconcile_interval = Duration::from_millis(500);
    options.env.push(("REPLICA_ID", "a".into()));
    let mut stack = Stack::start(options).await?;
    setup(&mut stack, 1, WORKFLOWS).await?;
    let (mut b, mut b_client) = stack.start_replica(&[("REPLICA_ID", "b".into())]).await?;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let on_a = placement(&stack.workflows, &b_client, WORKFLOWS).await?;
        let killed_at = SystemTime::now();
        if on_a * 2 >= WORKFLOWS {
            stack.kill_scheduler().await?;
            samples.push(between(
                killed_at,
                all_running_on(&b_client, WORKFLOWS).await?,
            ));
            stack.start_scheduler().await?;
        } else {
            b.kill().await?;
            samples.push(between(
                killed_at,
                all_running_on(&stack.workflows, WORKFLOWS).await?,
            ));
            (b, b_client) = stack.start_replica(&[("REPLICA_ID", "b".into())]).await?;
        }
    }
    samples.sort();
    println!(
        "(failover) kill -9 of the replica holding most of {WORKFLOWS} workflows -> all running on the other, {rounds} kills: p50 {} p99 {} max {} (LEASE_TTL 10 s)",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().context("no samples")?)
    );

    // Stopped past its lease: the takeover waits for the lease, and once
    // continued the stopped replica runs nothing beside the new holder.
    let on_a = placement(&stack.workflows, &b_client, WORKFLOWS).await?;
    let (holder, survivor) = if on_a * 2 >= WORKFLOWS {
        (
            stack.scheduler.as_ref().and_then(|s| s.pid()),
            b_client.clone(),
        )
    } else {
        (b.pid(), stack.workflows.clone())
    };
    let holder = nix::unistd::Pid::from_raw(holder.context("the holder runs")?);
    let stopped_at = SystemTime::now();
    nix::sys::signal::kill(holder, nix::sys::signal::Signal::SIGSTOP)?;
    let took_over = between(stopped_at, all_running_on(&survivor, WORKFLOWS).await?);
    nix::sys::signal::kill(holder, nix::sys::signal::Signal::SIGCONT)?;
    let continued = Instant::now();
    let mut both = 0;
    while continued.elapsed() < Duration::from_secs(3) {
        let (on_a, on_b) = (
            runners_of(&stack.workflows).await?,
            runners_of(&b_client).await?,
        );
        let running_a: std::collections::HashSet<&str> = on_a
            .iter()
            .filter(|r| r.state() == RunnerState::Running)
            .map(|r| r.workflow_id.as_str())
            .collect();
        both += on_b
            .iter()
            .filter(|r| r.state() == RunnerState::Running)
            .filter(|r| running_a.contains(r.workflow_id.as_str()))
            .count();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "(failover) SIGSTOP of the holder: taken over after {} (LEASE_TTL 10 s); after SIGCONT, {both} sightings of a workflow running on both replicas over 3 s",
        ms(took_over)
    );
    drop(b);
    Ok(())
}

async fn idle_agents(agents: usize) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        // The service's default: what a fleet at rest pays.
        session_heartbeat: Duration::from_secs(5),
        ..options()
    })
    .await?;
    let manager = stack.manager.pid().context("manager pid")?;
    let command = shepherd_testkit::bin_path("shepherd-agent")?
        .display()
        .to_string();
    let rss_before = rss_bytes(manager);
    let started = Instant::now();
    let mut creators = tokio::task::JoinSet::new();
    let per_creator = agents.div_ceil(16);
    for c in 0..16 {
        let mut client = stack.agents.clone();
        let range = (c * per_creator)..((c + 1) * per_creator).min(agents);
        let command = command.clone();
        creators.spawn(async move {
            for a in range {
                client
                    .create_agent(am::CreateAgentRequest {
                        agent: Some(am::Agent {
                            name: format!("idle-{a}"),
                            command: command.clone(),
                            ..Default::default()
                        }),
                    })
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = creators.join_next().await {
        result??;
    }
    let created = started.elapsed();
    let db = stack.db.client().await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready = loop {
        let ready: i64 = db
            .query_one(
                "SELECT count(*) FROM agent_manager.agents WHERE status = 'ready'",
                &[],
            )
            .await?
            .get(0);
        if ready as usize >= agents {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            bail!("{ready} of {agents} agents ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Let start-up work settle (first heartbeats, log file opens).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let window = Duration::from_secs(20);
    let before = cpu_ticks(&[manager]);
    tokio::time::sleep(window).await;
    let after = cpu_ticks(&[manager]);
    let rss = rss_bytes(manager);
    println!(
        "(idle-agents) {agents} agents created at once in {} (16 callers), all READY after {}; idle over {window:?} (session heartbeats every 5 s): agent-manager {:.2}% of one core, RSS {:.1} MiB = {:.1} KiB per agent",
        ms(created),
        ms(ready),
        after.saturating_sub(before) as f64 / 100.0 / window.as_secs_f64() * 100.0,
        rss as f64 / 1024.0 / 1024.0,
        rss.saturating_sub(rss_before) as f64 / 1024.0 / agents as f64,
    );
    Ok(())
}
