//! Shepherd's chaos run: a backlog drains across agents and two scheduler
//! replicas while, at random seeded moments, the faults of a bad week hit:
//! the agent-manager, a scheduler replica or an agent is SIGKILLed, a
//! replica is SIGSTOPped past its lease and SIGCONTed, PostgreSQL (a
//! throwaway cluster of this run's own, never the shared server) restarts,
//! and the event stream between the schedulers and the manager is cut.
//! At the end it verifies from the agents' own record and prints:
//!
//! * tasks lost (never ran): must be 0
//! * tasks run more than once, each attributed to the last fault before
//!   its repeat (only attempts in flight at a crash may repeat)
//! * workflows without exactly one running runner: must be 0
//! * the longest wait of a task from its creation to its first dispatch
//! * processes left behind: must be 0
//!
//! and exits non-zero if a "must" does not hold.
//!
//!   cargo build --release --workspace --bins && target/release/shepherd-chaos --seed 1
//!
//! Options: --seed N (default 1), --tasks N (default 10000), --agents N
//! (default 20), --task-ms N (each task's work, default 20), --min-faults N
//! (keep injecting until this many, even once drained; default 0),
//! --max-faults N (default 200).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shepherd_e2e::{AuthChannel, SeededRng, Stack, StackOptions, kill9, lines};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{
    self as sched, RunnerState, scheduler_client::SchedulerClient,
};
use shepherd_testkit::ServiceProcess;
use shepherd_testkit::cluster::Cluster;

const USAGE: &str = "usage: shepherd-chaos [--seed N] [--tasks N] [--agents N] [--task-ms N] [--min-faults N] [--max-faults N]";
/// Lease (and membership) lifetime of the replicas: short, so a stopped
/// replica's work moves within the run.
const LEASE_TTL: Duration = Duration::from_secs(2);

struct Args {
    seed: u64,
    tasks: usize,
    agents: usize,
    task_ms: u64,
    min_faults: usize,
    max_faults: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        seed: 1,
        tasks: 10_000,
        agents: 20,
        task_ms: 20,
        min_faults: 0,
        max_faults: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seed" => args.seed = value.parse()?,
            "--tasks" => args.tasks = value.parse()?,
            "--agents" => args.agents = value.parse()?,
            "--task-ms" => args.task_ms = value.parse()?,
            "--min-faults" => args.min_faults = value.parse()?,
            "--max-faults" => args.max_faults = value.parse()?,
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    Ok(args)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillManager,
    KillScheduler,
    KillAgent,
    PauseScheduler,
    RestartPostgres,
    CutEventStream,
}

const FAULTS: [Fault; 6] = [
    Fault::KillManager,
    Fault::KillScheduler,
    Fault::KillAgent,
    Fault::PauseScheduler,
    Fault::RestartPostgres,
    Fault::CutEventStream,
];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The run: the stack, its second replica, and what the faults need.
struct Run {
    cluster: Cluster,
    stack: Stack,
    replica_b: Option<ServiceProcess>,
    agents: Vec<String>,
    seed: u64,
    rng: SeededRng,
    faults: Vec<(u64, Fault)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let cluster = Cluster::start()?;
    let options = StackOptions {
        admin_url: Some(cluster.admin_url()),
        manager_proxy: true,
        startup_window: Duration::from_secs(30),
        reconcile_interval: Duration::from_secs(1),
        log: "error".into(),
        env: vec![
            ("REPLICA_ID", "a".into()),
            ("LEASE_TTL", format!("{}s", LEASE_TTL.as_secs())),
        ],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options).await?;
    let (replica_b, _) = stack.start_replica(&[("REPLICA_ID", "b".into())]).await?;
    let runs = stack.scratch_file("runs.log");
    // Each run of a task appends "title start-ms" to the agents' record.
    let template = format!(
        "echo \"{{{{title}}}} $(date +%s%3N)\" >> {}; sleep {}",
        runs.display(),
        args.task_ms as f64 / 1000.0
    );
    let mut agents = Vec::new();
    let mut workflows = Vec::new();
    for n in 0..args.agents {
        let agent = stack
            .create_agent(&format!("chaos-{n}"), am::RestartMode::OnFailure)
            .await?;
        let workflow = stack
            .workflows
            .create_workflow(sched::CreateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    name: format!("chaos-{n}"),
                    agent_id: agent.id.clone(),
                    enabled: true,
                    prompt_template: template.clone(),
                    max_concurrency: 2,
                    max_attempts: 100,
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        agents.push(agent.id);
        workflows.push(workflow.id);
    }
    let mut run = Run {
        cluster,
        stack,
        replica_b: Some(replica_b),
        agents,
        seed: args.seed,
        rng: SeededRng::new(args.seed),
        faults: Vec::new(),
    };
    let total = queue(&run.stack.workflows, &workflows, args.tasks).await?;
    eprintln!(
        "chaos: {total} tasks queued over {} workflows",
        workflows.len()
    );

    let start = Instant::now();
    while run.faults.len() < args.max_faults
        && (run.faults.len() < args.min_faults || run.stack.open_tasks().await.unwrap_or(1) > 0)
    {
        tokio::time::sleep(run.rng.millis(300, 1500)).await;
        let fault = FAULTS[run.rng.below(FAULTS.len())];
        if let Err(err) = run.inject(fault).await {
            eprintln!("chaos: {fault:?} failed: {err:#}");
        }
    }
    run.stack.wait_drained(Duration::from_secs(600)).await?;
    let drain = start.elapsed();
    let verdict = verdict(&run, &workflows, total, drain).await?;
    let Run {
        stack,
        replica_b,
        agents,
        cluster,
        ..
    } = run;
    drop(replica_b);
    drop(stack);
    let left = leftovers(&agents);
    println!("processes left behind: {left}");
    drop(cluster);
    if !verdict || left > 0 {
        bail!("the chaos run found a defect (see above)");
    }
    Ok(())
}

impl Run {
    async fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        self.faults.push((now_ms(), fault));
        match fault {
            Fault::KillManager => {
                self.stack.manager.kill().await?;
                self.stack.restart_manager().await?;
            }
            Fault::KillScheduler => {
                if self.rng.below(2) == 0 {
                    self.stack.kill_scheduler().await?;
                    self.stack.start_scheduler().await?;
                } else {
                    if let Some(mut b) = self.replica_b.take() {
                        b.kill().await?;
                    }
                    let (b, _) = self
                        .stack
                        .start_replica(&[("REPLICA_ID", "b".into())])
                        .await?;
                    self.replica_b = Some(b);
                }
            }
            Fault::KillAgent => {
                let agent = self.agents[self.rng.below(self.agents.len())].clone();
                let pid = self.stack.agent(&agent).await?.pid;
                if pid > 0 {
                    // The whole group: the agent and its task shells.
                    let _ = kill9(-pid);
                }
            }
            Fault::PauseScheduler => {
                let pid = if self.rng.below(2) == 0 {
                    self.stack.scheduler.as_ref().and_then(ServiceProcess::pid)
                } else {
                    self.replica_b.as_ref().and_then(ServiceProcess::pid)
                };
                if let Some(pid) = pid {
                    kill(Pid::from_raw(pid), Signal::SIGSTOP)?;
                    tokio::time::sleep(LEASE_TTL * 2).await;
                    kill(Pid::from_raw(pid), Signal::SIGCONT)?;
                }
            }
            Fault::RestartPostgres => self.cluster.restart()?,
            Fault::CutEventStream => {
                if let Some(proxy) = &self.stack.manager_proxy {
                    proxy.cut();
                    tokio::time::sleep(self.rng.millis(300, 2000)).await;
                    proxy.restore();
                }
            }
        }
        Ok(())
    }
}

async fn queue(
    client: &SchedulerClient<AuthChannel>,
    workflows: &[String],
    total: usize,
) -> anyhow::Result<usize> {
    let per = total.div_ceil(workflows.len());
    let mut triggers = tokio::task::JoinSet::new();
    for workflow in workflows {
        let client = client.clone();
        let workflow = workflow.clone();
        triggers.spawn(async move {
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
            anyhow::Ok(())
        });
    }
    while let Some(result) = triggers.join_next().await {
        result??;
    }
    Ok(per * workflows.len())
}

/// Prints the run's figures; false if a "must" does not hold.
async fn verdict(
    run: &Run,
    workflows: &[String],
    total: usize,
    drain: Duration,
) -> anyhow::Result<bool> {
    let stack = &run.stack;
    let db = stack.db.client().await?;
    let states: BTreeMap<String, i64> = db
        .query(
            "SELECT state, count(*) FROM scheduler.tasks GROUP BY state ORDER BY state",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    // The agents' own record: every run of every task, with its start.
    let mut runs: HashMap<String, Vec<u64>> = HashMap::new();
    for line in lines(&stack.scratch_file("runs.log")) {
        if let Some((title, at)) = line.rsplit_once(' ') {
            runs.entry(title.to_owned())
                .or_default()
                .push(at.parse().unwrap_or(0));
        }
    }
    let lost = total.saturating_sub(runs.len());
    let mut repeats: BTreeMap<String, usize> = BTreeMap::new();
    let mut repeated_tasks = 0;
    for starts in runs.values_mut().filter(|starts| starts.len() > 1) {
        repeated_tasks += 1;
        starts.sort_unstable();
        for repeat in &starts[1..] {
            let cause = run
                .faults
                .iter()
                .rev()
                .find(|(at, _)| at <= repeat)
                .map_or("no fault".to_owned(), |(_, fault)| format!("{fault:?}"));
            *repeats.entry(cause).or_default() += 1;
        }
    }
    let waited: f64 = db
        .query_one(
            "SELECT coalesce(max(extract(epoch FROM first.at - t.created_at)), 0)::float8
             FROM scheduler.tasks t
             JOIN (SELECT task_id, min(created_at) AS at FROM scheduler.task_events
                   WHERE state = 'dispatched' AND progress_message IS NULL GROUP BY task_id) first
               ON first.task_id = t.id",
            &[],
        )
        .await?
        .get(0);
    let unplaced = unplaced_workflows(run, workflows).await?;
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    for (_, fault) in &run.faults {
        *faults.entry(format!("{fault:?}")).or_default() += 1;
    }
    let not_final = states.get("pending").copied().unwrap_or(0)
        + states.get("dispatched").copied().unwrap_or(0);
    println!(
        "seed {}: {total} tasks drained in {:.1} s under {} faults {faults:?}",
        run.seed,
        drain.as_secs_f64(),
        run.faults.len()
    );
    println!("task states: {states:?}; not final: {not_final}");
    println!("tasks lost: {lost}");
    println!(
        "tasks run more than once: {repeated_tasks} (extra runs by the last fault before them: {repeats:?})"
    );
    println!("workflows without exactly one running runner: {unplaced}");
    println!("longest wait from creation to first dispatch: {waited:.1} s");
    Ok(lost == 0 && not_final == 0 && unplaced == 0)
}

/// Workflows that, once things settle (deadline 60 s), do not run on
/// exactly one replica with the other standing by.
async fn unplaced_workflows(run: &Run, workflows: &[String]) -> anyhow::Result<usize> {
    let b = run.replica_b.as_ref().context("replica b")?;
    let b = SchedulerClient::new(run.stack.options.channel(b).await?);
    let clients = [run.stack.workflows.clone(), b];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut running: HashMap<String, usize> = HashMap::new();
        for client in &clients {
            let runners = client
                .clone()
                .list_runners(sched::ListRunnersRequest::default())
                .await?
                .into_inner()
                .runners;
            for runner in runners {
                if runner.state() == RunnerState::Running {
                    *running.entry(runner.workflow_id).or_default() += 1;
                }
            }
        }
        let unplaced = workflows
            .iter()
            .filter(|w| running.get(*w).copied() != Some(1))
            .count();
        if unplaced == 0 || Instant::now() > deadline {
            return Ok(unplaced);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Processes of this run's agents still alive (found by their
/// `SHEPHERD_AGENT_ID` in /proc).
fn leftovers(agents: &[String]) -> usize {
    let markers: Vec<Vec<u8>> = agents
        .iter()
        .map(|id| format!("SHEPHERD_AGENT_ID={id}").into_bytes())
        .collect();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| shepherd_testkit::process_alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|b| *b == 0)
                    .any(|entry| markers.iter().any(|m| entry == m.as_slice()))
            })
        })
        .count()
}
