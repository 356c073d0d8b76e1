//! A schedule's policies with real processes: ticks missed while the
//! scheduler was down are caught up as `catch_up` says, `overlap` keeps a
//! long task from being overtaken, and a backfill makes the ticks of a
//! past range once each, bounded.

use std::time::{Duration, SystemTime};

use shepherd_e2e::{Stack, StackOptions, WAIT, lines};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, TaskState};
use shepherd_testkit::eventually;

fn policy(catch_up: sched::CatchUp, overlap: sched::Overlap) -> Option<sched::SchedulePolicy> {
    Some(sched::SchedulePolicy {
        catch_up: catch_up as i32,
        catch_up_window: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        overlap: overlap as i32,
    })
}

fn cron(expression: &str, policy: Option<sched::SchedulePolicy>) -> sched::Trigger {
    sched::Trigger {
        kind: Some(sched::trigger::Kind::Cron(sched::CronTrigger {
            expression: expression.into(),
            policy,
        })),
    }
}

fn every(seconds: i64, policy: Option<sched::SchedulePolicy>) -> sched::Trigger {
    sched::Trigger {
        kind: Some(sched::trigger::Kind::Interval(sched::IntervalTrigger {
            period: Some(prost_types::Duration { seconds, nanos: 0 }),
            policy,
        })),
    }
}

async fn workflow(
    stack: &Stack,
    agent: &str,
    name: &str,
    trigger: sched::Trigger,
    template: String,
) -> anyhow::Result<sched::Workflow> {
    Ok(workflow_of(stack, agent, name, trigger, template, 10).await?)
}

async fn workflow_of(
    stack: &Stack,
    agent: &str,
    name: &str,
    trigger: sched::Trigger,
    template: String,
    max_concurrency: u32,
) -> Result<sched::Workflow, tonic::Status> {
    Ok(stack
        .workflows
        .clone()
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: name.into(),
                agent_id: agent.into(),
                enabled: true,
                max_concurrency,
                trigger: Some(trigger),
                prompt_template: template,
                ..Default::default()
            }),
        })
        .await?
        .into_inner())
}

/// All of a workflow's tasks (at most 1000).
async fn all_tasks(stack: &Stack, workflow: &str) -> anyhow::Result<Vec<sched::Task>> {
    Ok(stack
        .workflows
        .clone()
        .list_tasks(sched::ListTasksRequest {
            workflow_id: workflow.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner()
        .tasks)
}

/// The tick a schedule's task was made for, from its key.
fn tick_of(task: &sched::Task) -> Option<SystemTime> {
    let at = task.idempotency_key.strip_prefix("tick-")?;
    humantime::parse_rfc3339_weak(at).ok()
}

fn unix(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|since| since.as_secs_f64())
        .unwrap_or(0.0)
}

/// Waits until the wall clock is `offset` seconds past a multiple of 5.
async fn align_to_five_seconds(offset: f64) {
    let now = unix(SystemTime::now());
    let wait = (offset - now.rem_euclid(5.0)).rem_euclid(5.0);
    // Waiting for a wall-clock moment, not for an event: nothing to poll.
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
}

fn title(task: &sched::Task) -> String {
    task.fields
        .as_ref()
        .map(|fields| fields.title.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn ticks_missed_while_the_scheduler_was_down_are_caught_up_as_the_policy_says()
-> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("cron", am::RestartMode::OnFailure)
        .await?;
    let log = stack.scratch_file("ran.log");
    let template = format!("echo {{{{title}}}} >> {}", log.display());
    let every_5s = "*/5 * * * * *";
    let all = workflow(
        &stack,
        &agent.id,
        "catch-up-all",
        cron(every_5s, policy(sched::CatchUp::All, sched::Overlap::Allow)),
        template.clone(),
    )
    .await?;
    let latest = workflow(
        &stack,
        &agent.id,
        "catch-up-latest",
        cron(
            every_5s,
            policy(sched::CatchUp::Latest, sched::Overlap::Allow),
        ),
        template,
    )
    .await?;
    eventually(WAIT, "a first tick of each", || async {
        let ticked = !all_tasks(&stack, &all.id).await?.is_empty()
            && !all_tasks(&stack, &latest.id).await?.is_empty();
        Ok(ticked.then_some(()))
    })
    .await?;

    // Down from 1 s after a tick to half a second after the third one
    // since: ticks at +5, +10 and +15 s come while no scheduler runs.
    align_to_five_seconds(1.0).await;
    let down = SystemTime::now();
    stack.kill_scheduler().await?;
    // Ticks nobody fires mark no event: the wall clock is what passes.
    let back_at = down + Duration::from_millis(14_500);
    tokio::time::sleep(
        back_at
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    let up = SystemTime::now();
    stack.start_scheduler().await?;

    let missed = |tasks: &[sched::Task]| -> Vec<sched::Task> {
        tasks
            .iter()
            .filter(|task| tick_of(task).is_some_and(|tick| tick > down && tick < up))
            .cloned()
            .collect()
    };
    let caught_up = eventually(WAIT, "ALL to catch up 3 ticks", || async {
        let caught = missed(&all_tasks(&stack, &all.id).await?);
        Ok((caught.len() >= 3).then_some(caught))
    })
    .await?;
    let ids: Vec<String> = caught_up.iter().map(|task| task.id.clone()).collect();
    stack.wait_tasks(&ids, TaskState::Succeeded).await?;
    // LATEST made its one task by now too (the same round fired both).
    let latest_missed = missed(&all_tasks(&stack, &latest.id).await?);
    let latest_ids: Vec<String> = latest_missed.iter().map(|task| task.id.clone()).collect();
    stack.wait_tasks(&latest_ids, TaskState::Succeeded).await?;

    assert_eq!(caught_up.len(), 3, "ALL: one task per missed tick");
    assert_eq!(
        latest_missed.len(),
        1,
        "LATEST: one task for the missed ticks: {:?}",
        latest_missed.iter().map(title).collect::<Vec<_>>()
    );
    let newest = caught_up.iter().filter_map(tick_of).max();
    assert_eq!(tick_of(&latest_missed[0]), newest, "LATEST is the latest");
    // Once each: every caught-up tick ran exactly once.
    let ran = lines(&log);
    for task in caught_up.iter().chain(&latest_missed) {
        let times = ran.iter().filter(|line| **line == title(task)).count();
        assert_eq!(times, 1, "{} ran {times} times", title(task));
    }
    Ok(())
}

#[tokio::test]
async fn overlap_keeps_a_long_task_from_being_overtaken() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("long", am::RestartMode::OnFailure)
        .await?;
    // Each task records its start and end; the first one runs 4 s, the
    // later ones at once (a marker file says which is first).
    let template = |name: &str| {
        let log = stack.scratch_file(&format!("{name}.log"));
        let first = stack.scratch_file(&format!("{name}.first"));
        format!(
            "echo start {{{{title}}}} >> {log}; if mkdir {first} 2>/dev/null; then sleep 4; fi; echo end {{{{title}}}} >> {log}",
            log = log.display(),
            first = first.display()
        )
    };
    let skip = workflow(
        &stack,
        &agent.id,
        "overlap-skip",
        every(1, policy(sched::CatchUp::Latest, sched::Overlap::Skip)),
        template("skip"),
    )
    .await?;
    let buffering = every(1, policy(sched::CatchUp::Latest, sched::Overlap::BufferOne));
    // A buffered task would start beside the running one at once.
    let refused = workflow_of(
        &stack,
        &agent.id,
        "overlap-buffer",
        buffering.clone(),
        template("buffer"),
        2,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("max_concurrency"),
        "{}",
        refused.message()
    );
    let buffer = workflow_of(
        &stack,
        &agent.id,
        "overlap-buffer",
        buffering,
        template("buffer"),
        1,
    )
    .await?;
    // Both first tasks done, and one more after each.
    for (workflow, name) in [(&skip, "skip"), (&buffer, "buffer")] {
        let log = stack.scratch_file(&format!("{name}.log"));
        eventually(WAIT, "the long task and one after it", || async {
            let ends = lines(&log).iter().filter(|l| l.starts_with("end")).count();
            Ok((ends >= 2).then_some(()))
        })
        .await?;
        let tasks = all_tasks(&stack, &workflow.id).await?;
        let skipped: Vec<&sched::Task> = tasks
            .iter()
            .filter(|task| task.state() == TaskState::Skipped)
            .collect();
        assert!(
            skipped.len() >= 2,
            "{name}: the ticks during the 4 s task were skipped: {}",
            skipped.len()
        );
        for task in &skipped {
            assert!(task.last_error.contains("overlap"), "{}", task.last_error);
            assert_eq!(task.attempts, 0, "a skipped tick never runs");
        }
        // Never two at once: each start follows the previous end.
        let log = lines(&log);
        let mut running = 0;
        for line in &log {
            running += if line.starts_with("start") { 1 } else { -1 };
            assert!(running <= 1, "{name}: two tasks ran at once: {log:?}");
        }
    }
    // BUFFER_ONE kept one tick waiting behind the long task: the second
    // task to run was made while the first still ran.
    let tasks = all_tasks(&stack, &buffer.id).await?;
    let mut ran: Vec<&sched::Task> = tasks
        .iter()
        .filter(|task| task.state() == TaskState::Succeeded)
        .collect();
    ran.sort_by_key(|task| tick_of(task));
    let first_end = ran[0]
        .update_time
        .and_then(|t| SystemTime::try_from(t).ok());
    let second_tick = tick_of(ran[1]);
    assert!(
        second_tick
            .zip(first_end)
            .is_some_and(|(tick, end)| tick < end),
        "the buffered tick came while the first task ran"
    );
    Ok(())
}

#[tokio::test]
async fn a_backfill_makes_each_past_tick_once_and_refuses_what_it_cannot() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("backfill", am::RestartMode::OnFailure)
        .await?;
    let log = stack.scratch_file("ran.log");
    let hourly = workflow(
        &stack,
        &agent.id,
        "hourly",
        every(3600, None),
        format!("echo {{{{title}}}} >> {}", log.display()),
    )
    .await?;
    let backfill = |from: SystemTime, to: SystemTime| {
        let mut client = stack.workflows.clone();
        let id = hourly.id.clone();
        async move {
            client
                .backfill_workflow(sched::BackfillWorkflowRequest {
                    workflow_id: id,
                    from: Some(from.into()),
                    to: Some(to.into()),
                })
                .await
                .map(|response| response.into_inner())
        }
    };
    let hour = Duration::from_secs(3600);
    let now = SystemTime::now();
    let first = backfill(now - 5 * hour, now).await?;
    assert_eq!((first.ticks, first.created), (5, 5));
    let again = backfill(now - 5 * hour, now).await?;
    assert_eq!((again.ticks, again.created), (5, 0), "idempotent");
    let wider = backfill(now - 7 * hour, now).await?;
    assert_eq!((wider.ticks, wider.created), (7, 2));

    let tasks = all_tasks(&stack, &hourly.id).await?;
    assert_eq!(tasks.len(), 7);
    let ids: Vec<String> = tasks.iter().map(|task| task.id.clone()).collect();
    stack.wait_tasks(&ids, TaskState::Succeeded).await?;
    let ran = lines(&log);
    for task in &tasks {
        let times = ran.iter().filter(|line| **line == title(task)).count();
        assert_eq!(times, 1, "{} ran {times} times", title(task));
    }

    // Refused, and nothing stored: a range past the bound, a range the
    // wrong way round, the future, a workflow without a schedule.
    let too_many = backfill(now - 1001 * hour, now).await.unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    assert!(
        too_many.message().contains("1000"),
        "{}",
        too_many.message()
    );
    let reversed = backfill(now, now - hour).await.unwrap_err();
    assert_eq!(reversed.code(), tonic::Code::InvalidArgument);
    let future = backfill(now, now + hour).await.unwrap_err();
    assert_eq!(future.code(), tonic::Code::InvalidArgument);
    assert_eq!(all_tasks(&stack, &hourly.id).await?.len(), 7);

    let manual = stack
        .create_workflow("manual", &agent.id, true, "echo hi")
        .await?;
    let not_a_schedule = stack
        .workflows
        .clone()
        .backfill_workflow(sched::BackfillWorkflowRequest {
            workflow_id: manual.id.clone(),
            from: Some((now - hour).into()),
            to: Some(now.into()),
        })
        .await
        .unwrap_err();
    assert_eq!(not_a_schedule.code(), tonic::Code::FailedPrecondition);
    Ok(())
}
