//! Concurrency keys: a key's limit holds at the agents across scheduler
//! replicas and a replica's crash, workflows waiting for a key share it
//! fairly, priorities go first, and bad keys are refused with nothing
//! stored.

use std::collections::BTreeMap;
use std::time::Duration;

use shepherd_e2e::{Stack, StackOptions, WAIT, lines, wait_lines};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, TaskState};
use shepherd_testkit::eventually;
use tonic::Code;

fn options() -> StackOptions {
    StackOptions {
        reconcile_interval: Duration::from_millis(300),
        env: vec![("REPLICA_ID", "a".into()), ("LEASE_TTL", "1s".into())],
        ..StackOptions::default()
    }
}

async fn put_key(
    stack: &Stack,
    name: &str,
    max_running: u32,
) -> anyhow::Result<sched::ConcurrencyKey> {
    put(
        stack,
        sched::ConcurrencyKey {
            name: name.into(),
            max_running,
            ..Default::default()
        },
    )
    .await
}

async fn put(stack: &Stack, key: sched::ConcurrencyKey) -> anyhow::Result<sched::ConcurrencyKey> {
    Ok(stack
        .workflows
        .clone()
        .put_concurrency_key(sched::PutConcurrencyKeyRequest { key: Some(key) })
        .await?
        .into_inner())
}

/// A disabled workflow of `agent` naming `keys`, whose tasks log
/// "start TITLE" and "end TITLE" to `log` around a pause of `seconds`.
async fn keyed_workflow(
    stack: &Stack,
    name: &str,
    agent: &str,
    keys: &[&str],
    log: &std::path::Path,
    seconds: f64,
) -> anyhow::Result<sched::Workflow> {
    let log = log.display();
    let template = format!(
        "echo start {{{{title}}}} >> {log}; sleep {seconds}; echo end {{{{title}}}} >> {log}"
    );
    Ok(stack
        .workflows
        .clone()
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: name.into(),
                agent_id: agent.into(),
                enabled: false,
                prompt_template: template,
                concurrency_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner())
}

async fn trigger(
    stack: &Stack,
    workflow: &str,
    title: &str,
    priority: i32,
) -> anyhow::Result<String> {
    Ok(stack
        .workflows
        .clone()
        .trigger_workflow(sched::TriggerWorkflowRequest {
            workflow_id: workflow.into(),
            idempotency_key: title.into(),
            fields: Some(sched::TaskFields {
                title: title.into(),
                ..Default::default()
            }),
            timeout: None,
            priority,
        })
        .await?
        .into_inner()
        .id)
}

async fn enable(stack: &Stack, workflow: &str) -> anyhow::Result<()> {
    stack
        .workflows
        .clone()
        .update_workflow(sched::UpdateWorkflowRequest {
            workflow: Some(sched::Workflow {
                id: workflow.into(),
                enabled: true,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
        })
        .await?;
    Ok(())
}

/// The most tasks running at once, from the log's start and end lines (in
/// the order the agents appended them).
fn most_at_once(log: &[String]) -> usize {
    let (mut running, mut most) = (0usize, 0usize);
    for line in log {
        if line.starts_with("start ") {
            running += 1;
            most = most.max(running);
        } else {
            running = running.saturating_sub(1);
        }
    }
    most
}

#[tokio::test]
async fn a_key_limit_holds_at_the_agents_across_replicas_and_a_crash_and_is_shared_fairly()
-> anyhow::Result<()> {
    const WORKFLOWS: usize = 20;
    const PER_WORKFLOW: usize = 20;
    let mut stack = Stack::start(options()).await?;
    let (mut b_process, _b) = stack
        .start_replica(&[("REPLICA_ID", "b".into()), ("LEASE_TTL", "1s".into())])
        .await?;
    put_key(&stack, "provider:shared", 3).await?;
    let mut agents = Vec::new();
    for n in 0..5 {
        let agent = stack
            .create_agent(&format!("keyed-{n}"), am::RestartMode::OnFailure)
            .await?;
        agents.push(agent.id);
    }
    let log = stack.scratch_file("runs.log");
    let mut workflows = Vec::new();
    let mut tasks = Vec::new();
    for n in 0..WORKFLOWS {
        let workflow = keyed_workflow(
            &stack,
            &format!("keyed-{n}"),
            &agents[n % agents.len()],
            &["provider:shared"],
            &log,
            0.05,
        )
        .await?;
        for k in 0..PER_WORKFLOW {
            tasks.push(trigger(&stack, &workflow.id, &format!("w{n}-{k}"), 0).await?);
        }
        workflows.push(workflow.id);
    }
    for workflow in &workflows {
        enable(&stack, workflow).await?;
    }

    // Half-way through the first half, the replica holding about half the
    // leases dies; the other takes its workflows over.
    let total = WORKFLOWS * PER_WORKFLOW;
    wait_lines(&log, total / 2).await?;
    b_process.kill().await?;
    stack.wait_tasks(&tasks, TaskState::Succeeded).await?;

    let log = lines(&log);
    assert_eq!(
        log.len(),
        2 * total,
        "each task ran once: {} lines",
        log.len()
    );
    let most = most_at_once(&log);
    assert!(most <= 3, "{most} tasks holding the key ran at once");
    assert_eq!(most, 3, "the key's slots were used");
    // Fair shares: of the first half of the tasks to finish, each workflow
    // has its share within 20%.
    let mut finished: BTreeMap<String, usize> = BTreeMap::new();
    for line in log
        .iter()
        .filter_map(|l| l.strip_prefix("end "))
        .take(total / 2)
    {
        let workflow = line.split('-').next().unwrap_or_default().to_owned();
        *finished.entry(workflow).or_default() += 1;
    }
    let fair = (total / 2) as f64 / WORKFLOWS as f64;
    for n in 0..WORKFLOWS {
        let share = finished.get(&format!("w{n}")).copied().unwrap_or(0) as f64;
        assert!(
            (share - fair).abs() <= 0.2 * fair,
            "workflow w{n} finished {share} of the first {} tasks (fair: {fair}): {finished:?}",
            total / 2
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_freed_slot_goes_to_the_highest_priority_then_round_robin() -> anyhow::Result<()> {
    let mut stack = Stack::start(options()).await?;
    put_key(&stack, "repo:web", 1).await?;
    let agent = stack
        .create_agent("keyed", am::RestartMode::OnFailure)
        .await?;
    let log = stack.scratch_file("runs.log");
    // A blocker holds the key's one slot while the others line up.
    let blocker = keyed_workflow(&stack, "blocker", &agent.id, &["repo:web"], &log, 2.0).await?;
    let a = keyed_workflow(&stack, "a", &agent.id, &["repo:web"], &log, 0.05).await?;
    let b = keyed_workflow(&stack, "b", &agent.id, &["repo:web"], &log, 0.05).await?;
    let first = trigger(&stack, &blocker.id, "blocker", 0).await?;
    enable(&stack, &blocker.id).await?;
    wait_lines(&log, 1).await?;
    let mut tasks = vec![first];
    tasks.push(trigger(&stack, &a.id, "a0", 0).await?);
    tasks.push(trigger(&stack, &a.id, "a1", 0).await?);
    tasks.push(trigger(&stack, &b.id, "b0", 0).await?);
    tasks.push(trigger(&stack, &b.id, "b1", 5).await?);
    enable(&stack, &a.id).await?;
    enable(&stack, &b.id).await?;
    // Both wait for the key before the blocker ends.
    eventually(WAIT, "both workflows waiting for the key", || async {
        let keys = stack
            .workflows
            .clone()
            .list_concurrency_keys(sched::ListConcurrencyKeysRequest {})
            .await?
            .into_inner()
            .keys;
        Ok((keys.first().map(|k| (k.running, k.waiting)) == Some((1, 2))).then_some(()))
    })
    .await?;
    stack.wait_tasks(&tasks, TaskState::Succeeded).await?;
    let order: Vec<String> = lines(&log)
        .iter()
        .filter_map(|l| l.strip_prefix("start ").map(str::to_owned))
        .collect();
    assert_eq!(order, ["blocker", "b1", "a0", "b0", "a1"]);
    assert_eq!(most_at_once(&lines(&log)), 1);
    Ok(())
}

#[tokio::test]
async fn bad_keys_and_priorities_are_refused_and_nothing_is_stored() -> anyhow::Result<()> {
    let mut stack = Stack::start(options()).await?;
    let agent = stack
        .create_agent("keyed", am::RestartMode::OnFailure)
        .await?;
    let log = stack.scratch_file("runs.log");
    for (name, limit) in [("", 1), ("Upper", 1), ("ok", 0), ("ok", 100_001)] {
        let refused = put_key(&stack, name, limit).await.expect_err("refused");
        let status = refused.downcast_ref::<tonic::Status>().expect("a status");
        assert_eq!(status.code(), Code::InvalidArgument, "{name:?} {limit}");
    }
    // A rate with a period of zero, or without a period, caps nothing: refused.
    for (rate_limit, seconds) in [(10, Some(0)), (10, None), (0, Some(60))] {
        let key = sched::ConcurrencyKey {
            name: "rated".into(),
            max_running: 1,
            rate_limit,
            rate_period: seconds.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        };
        let refused = put(&stack, key).await.expect_err("refused");
        let status = refused.downcast_ref::<tonic::Status>().expect("a status");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{rate_limit} per {seconds:?}"
        );
    }
    let keys = stack
        .workflows
        .clone()
        .list_concurrency_keys(sched::ListConcurrencyKeysRequest {})
        .await?
        .into_inner()
        .keys;
    assert!(keys.is_empty(), "nothing stored: {keys:?}");
    let unknown = keyed_workflow(&stack, "w", &agent.id, &["nobody:defined"], &log, 0.0)
        .await
        .expect_err("an unknown key is refused");
    let status = unknown.downcast_ref::<tonic::Status>().expect("a status");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("not defined"),
        "{}",
        status.message()
    );
    let listed = stack
        .workflows
        .clone()
        .list_workflows(sched::ListWorkflowsRequest::default())
        .await?
        .into_inner()
        .workflows;
    assert!(listed.is_empty(), "nothing stored: {listed:?}");

    put_key(&stack, "db:staging", 2).await?;
    let workflow = keyed_workflow(&stack, "w", &agent.id, &["db:staging"], &log, 0.0).await?;
    assert_eq!(workflow.concurrency_keys, ["db:staging"]);
    let in_use = stack
        .workflows
        .clone()
        .delete_concurrency_key(sched::DeleteConcurrencyKeyRequest {
            name: "db:staging".into(),
        })
        .await
        .expect_err("a key in use stays");
    assert_eq!(in_use.code(), Code::FailedPrecondition);
    let absurd = trigger(&stack, &workflow.id, "t", 2_000_000)
        .await
        .expect_err("an absurd priority is refused");
    let status = absurd.downcast_ref::<tonic::Status>().expect("a status");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        stack.tasks(&workflow.id).await?.is_empty(),
        "no task stored for a refused trigger"
    );
    // A key's limit can change; one no workflow names can go.
    assert_eq!(put_key(&stack, "db:staging", 5).await?.max_running, 5);
    stack
        .workflows
        .clone()
        .delete_workflow(sched::DeleteWorkflowRequest {
            workflow_id: workflow.id.clone(),
        })
        .await?;
    stack
        .workflows
        .clone()
        .delete_concurrency_key(sched::DeleteConcurrencyKeyRequest {
            name: "db:staging".into(),
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_rate_limit_holds_across_a_scheduler_restart() -> anyhow::Result<()> {
    // 3 starts per 6 s: a bucket of 3 tokens, one more every 2 s.
    const BURST: f64 = 3.0;
    const PER_SECOND: f64 = 0.5;
    let mut stack = Stack::start(options()).await?;
    put(
        &stack,
        sched::ConcurrencyKey {
            name: "api:rated".into(),
            max_running: 100,
            rate_limit: 3,
            rate_period: Some(prost_types::Duration {
                seconds: 6,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await?;
    let agent = stack
        .create_agent("rated", am::RestartMode::OnFailure)
        .await?;
    let log = stack.scratch_file("starts.log");
    let workflow = stack
        .workflows
        .clone()
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: "rated".into(),
                agent_id: agent.id.clone(),
                enabled: true,
                max_concurrency: 10,
                concurrency_keys: vec!["api:rated".into()],
                prompt_template: format!("date +%s.%N >> {}", log.display()),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let mut tasks = Vec::new();
    for n in 0..3 {
        tasks.push(trigger(&stack, &workflow.id, &format!("before-{n}"), 0).await?);
    }
    stack.wait_tasks(&tasks, TaskState::Succeeded).await?;
    // The bucket is empty: a fourth task waits for a token, and the
    // diagnosis says so.
    tasks.push(trigger(&stack, &workflow.id, "before-3", 0).await?);
    let diagnosis = eventually(WAIT, "a RATE_LIMITED verdict", || async {
        let diagnosis = stack
            .workflows
            .clone()
            .explain_workflow(sched::ExplainWorkflowRequest {
                workflow_id: workflow.id.clone(),
            })
            .await?
            .into_inner();
        Ok((diagnosis.verdict() == sched::Verdict::RateLimited).then_some(diagnosis))
    })
    .await?;
    assert!(
        diagnosis.summary.contains("api:rated"),
        "{}",
        diagnosis.summary
    );
    stack.wait_tasks(&tasks, TaskState::Succeeded).await?;
    // The bucket is empty again; a restarted scheduler must not find it full.
    stack.kill_scheduler().await?;
    stack.start_scheduler().await?;
    for n in 0..3 {
        tasks.push(trigger(&stack, &workflow.id, &format!("after-{n}"), 0).await?);
    }
    stack.wait_tasks(&tasks, TaskState::Succeeded).await?;

    let mut starts: Vec<f64> = lines(&log)
        .iter()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    starts.sort_by(f64::total_cmp);
    assert_eq!(starts.len(), 7);
    // A token bucket: in any window, at most the burst plus what refills
    // over it (and 0.3 s for the clocks of the database and this host).
    for i in 0..starts.len() {
        for j in i..starts.len() {
            let allowed = BURST + (starts[j] - starts[i] + 0.3) * PER_SECOND;
            assert!(
                (j - i + 1) as f64 <= allowed,
                "{} starts within {:.2} s: {starts:?}",
                j - i + 1,
                starts[j] - starts[i]
            );
        }
    }
    Ok(())
}
