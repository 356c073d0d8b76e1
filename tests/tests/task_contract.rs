//! Tasks as a contract: an agent receives a task's fields as data, and no
//! field can change what runs, in the reference agent's shell mode and in
//! its exec mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shepherd_e2e::{Stack, StackOptions, test_restart_policy};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, TaskState};

/// Values that would run `touch MARKER` if any field were pasted into a
/// shell command, and values a careless argv would take for options.
fn hostile(marker: &Path) -> Vec<String> {
    let m = marker.display();
    vec![
        format!("; touch {m}"),
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("| touch {m}"),
        format!("&& touch {m}"),
        format!("x\ntouch {m}\n"),
        format!("'; touch {m}; '"),
        format!("\"; touch {m}; \""),
        format!("\\\"$(touch {m})\\\""),
        "-n".to_owned(),
        "--help".to_owned(),
        "$HOME ${PATH} *".to_owned(),
        "ünïcødé ✓".to_owned(),
    ]
}

fn fields(value: &str, n: usize) -> sched::TaskFields {
    sched::TaskFields {
        title: value.to_owned(),
        body: value.to_owned(),
        url: value.to_owned(),
        labels: vec![],
        metadata: [
            ("k".to_owned(), value.to_owned()),
            ("n".to_owned(), n.to_string()),
        ]
        .into(),
    }
}

async fn agent(
    stack: &mut Stack,
    name: &str,
    args: Vec<String>,
    out: &Path,
) -> anyhow::Result<String> {
    let agent = stack
        .create_agent_with(am::Agent {
            name: name.to_owned(),
            args,
            env: [("OUT_DIR".to_owned(), out.display().to_string())].into(),
            ..Default::default()
        })
        .await?;
    Ok(agent.id)
}

/// Triggers one task per hostile value and waits for all to succeed.
async fn run_corpus(stack: &mut Stack, workflow: &str, corpus: &[String]) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for (n, value) in corpus.iter().enumerate() {
        let task = stack
            .workflows
            .trigger_workflow(sched::TriggerWorkflowRequest {
                workflow_id: workflow.to_owned(),
                idempotency_key: format!("v{n}"),
                fields: Some(fields(value, n)),
                timeout: None,
                priority: 0,
            })
            .await?
            .into_inner();
        tasks.push(task.id);
    }
    stack.wait_tasks(&tasks, TaskState::Succeeded).await?;
    Ok(())
}

/// The NUL-separated values a task wrote.
fn written(path: PathBuf) -> anyhow::Result<Vec<String>> {
    let bytes = std::fs::read(&path)?;
    let text = String::from_utf8(bytes)?;
    Ok(text.split_terminator('\0').map(str::to_owned).collect())
}

#[tokio::test]
async fn no_field_can_change_what_runs_in_shell_or_exec_mode() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let out = stack.scratch_file("out");
    std::fs::create_dir_all(&out)?;
    let marker = stack.scratch_file("marker");
    let corpus = hostile(&marker);

    // Shell mode: the template is the script, the fields are data.
    let shell_agent = agent(&mut stack, "shell", vec![], &out).await?;
    let template = format!(
        "printf '%s\\0' {{{{title}}}} {{{{body}}}} {{{{url}}}} {{{{metadata.k}}}} > {}/shell-{{{{metadata.n}}}}",
        out.display()
    );
    let shell = stack
        .create_workflow("shell", &shell_agent, true, &template)
        .await?;
    run_corpus(&mut stack, &shell.id, &corpus).await?;

    // Exec mode: a fixed argv; the prompt on stdin, the fields in the
    // environment.
    let program = "cat > \"$OUT_DIR/prompt-$SHEPHERD_TASK_METADATA_N\"; \
                   printf '%s\\0' \"$SHEPHERD_TASK_TITLE\" \"$SHEPHERD_TASK_BODY\" \"$SHEPHERD_TASK_URL\" \
                   \"$SHEPHERD_TASK_METADATA_K\" \"$SHEPHERD_WORKFLOW_NAME\" \"$SHEPHERD_TASK_ATTEMPT\" \
                   > \"$OUT_DIR/exec-$SHEPHERD_TASK_METADATA_N\"";
    // OUT_DIR is the agent's; a task gets it only because it is passed on.
    let exec_args = [
        "--pass-env",
        "OUT_DIR",
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        program,
    ]
    .map(str::to_owned)
    .to_vec();
    let exec_agent = agent(&mut stack, "exec", exec_args, &out).await?;
    let exec = stack
        .create_workflow("exec", &exec_agent, true, "Fix {{title}}: {{body}}")
        .await?;
    run_corpus(&mut stack, &exec.id, &corpus).await?;

    assert!(!marker.exists(), "a field ran a command");
    let mut mismatches = BTreeMap::new();
    for (n, value) in corpus.iter().enumerate() {
        let shell_values = written(out.join(format!("shell-{n}")))?;
        if shell_values != [value.as_str(); 4] {
            mismatches.insert(format!("shell {n}"), shell_values);
        }
        let exec_values = written(out.join(format!("exec-{n}")))?;
        let want = [value.as_str(), value, value, value, "exec", "1"];
        if exec_values != want {
            mismatches.insert(format!("exec {n}"), exec_values);
        }
        let prompt = std::fs::read_to_string(out.join(format!("prompt-{n}")))?;
        if prompt != format!("Fix {value}: {value}") {
            mismatches.insert(format!("prompt {n}"), vec![prompt]);
        }
    }
    assert!(
        mismatches.is_empty(),
        "text did not arrive intact: {mismatches:#?}"
    );
    Ok(())
}

/// A workflow on a fresh agent whose tasks run `template`, with the given
/// task timeout (seconds); the agent's extra environment in `agent_env`.
async fn timed_workflow(
    stack: &mut Stack,
    name: &str,
    template: &str,
    timeout_secs: i64,
    max_attempts: u32,
    agent_env: &[(&str, &str)],
) -> anyhow::Result<(String, sched::Workflow)> {
    let agent = stack
        .create_agent_with(am::Agent {
            name: format!("{name}-agent"),
            env: agent_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            restart_policy: Some(test_restart_policy(am::RestartMode::OnFailure)),
            ..Default::default()
        })
        .await?;
    let workflow = stack
        .workflows
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: name.to_owned(),
                agent_id: agent.id.clone(),
                enabled: true,
                prompt_template: template.to_owned(),
                task_timeout: Some(prost_types::Duration {
                    seconds: timeout_secs,
                    nanos: 0,
                }),
                max_attempts,
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    Ok((agent.id, workflow))
}

/// The workflow's next task runs to success (it touches `done`).
async fn next_task_runs(stack: &mut Stack, workflow: &str, done: &Path) -> anyhow::Result<()> {
    let next = stack.trigger(workflow, "next", "next").await?;
    stack
        .wait_tasks(std::slice::from_ref(&next.id), TaskState::Succeeded)
        .await?;
    assert!(done.exists());
    Ok(())
}

/// The pid a task wrote to `file`, once it has.
async fn pid_in(file: &Path) -> anyhow::Result<i32> {
    shepherd_testkit::eventually(shepherd_e2e::WAIT, "the task's pid", || async {
        Ok(std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok()))
    })
    .await
}

async fn wait_gone(pid: i32) -> anyhow::Result<()> {
    shepherd_testkit::eventually(
        shepherd_e2e::WAIT,
        "the task's process to be gone",
        || async { Ok((!shepherd_testkit::process_alive(pid)).then_some(())) },
    )
    .await
}

#[tokio::test]
async fn a_hung_task_times_out_its_processes_die_and_the_next_task_runs() -> anyhow::Result<()> {
    let options = StackOptions {
        env: vec![("CANCEL_GRACE", "5s".into())],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options).await?;
    let pidfile = stack.scratch_file("hung.pid");
    let done = stack.scratch_file("done");
    let template = format!(
        "if [ {{{{title}}}} = hang ]; then sleep 1000 & echo $! > {}; wait; else touch {}; fi",
        pidfile.display(),
        done.display()
    );
    let (_, workflow) = timed_workflow(&mut stack, "hangs", &template, 1, 2, &[]).await?;
    let hung = stack.trigger(&workflow.id, "hang", "hang").await?;
    let sleeper = pid_in(&pidfile).await?;
    // Timed out, retried (the default policy retries timeouts), timed out
    // again: out of attempts, dead-lettered.
    stack
        .wait_tasks(std::slice::from_ref(&hung.id), TaskState::TimedOut)
        .await?;
    wait_gone(sleeper).await?;
    let hung = stack
        .workflows
        .get_task(sched::GetTaskRequest {
            task_id: hung.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(hung.attempts, 2);
    assert!(hung.dead_letter);
    let outcomes: Vec<&str> = hung.history.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["timed_out", "timed_out"]);
    next_task_runs(&mut stack, &workflow.id, &done).await
}

#[tokio::test]
async fn a_wedged_agent_that_ignores_cancel_is_restarted_and_its_runners_come_back()
-> anyhow::Result<()> {
    let options = StackOptions {
        env: vec![("CANCEL_GRACE", "1s".into())],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options).await?;
    let done = stack.scratch_file("done");
    let template = format!(
        "if [ {{{{title}}}} = hang ]; then sleep 1000; else touch {}; fi",
        done.display()
    );
    let (agent, workflow) = timed_workflow(
        &mut stack,
        "wedges",
        &template,
        1,
        1,
        &[("SHEPHERD_FAILPOINTS", "sdk.ignore_cancel=skip")],
    )
    .await?;
    let generation = stack.agent(&agent).await?.generation;
    let hung = stack.trigger(&workflow.id, "hang", "hang").await?;
    stack
        .wait_tasks(std::slice::from_ref(&hung.id), TaskState::TimedOut)
        .await?;
    // Replaced through the one restart path: a new generation, and the
    // workflow's runner is back.
    stack.wait_agent_ready(&agent, generation + 1).await?;
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Running, "")
        .await?;
    next_task_runs(&mut stack, &workflow.id, &done).await
}

#[tokio::test]
async fn cancelling_pending_and_running_tasks_is_final_and_idempotent() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let pidfile = stack.scratch_file("running.pid");
    let done = stack.scratch_file("done");
    let template = format!(
        "if [ {{{{title}}}} = long ]; then sleep 1000 & echo $! > {}; wait; else touch {}; fi",
        pidfile.display(),
        done.display()
    );
    let (_, workflow) = timed_workflow(&mut stack, "cancels", &template, 3600, 3, &[]).await?;
    let running = stack.trigger(&workflow.id, "long", "long").await?;
    let sleeper = pid_in(&pidfile).await?;
    // Max concurrency 1: this one waits behind the running one.
    let pending = stack.trigger(&workflow.id, "queued", "queued").await?;

    let cancel = |id: String| {
        let mut client = stack.workflows.clone();
        async move {
            anyhow::Ok(
                client
                    .cancel_task(sched::CancelTaskRequest { task_id: id })
                    .await?
                    .into_inner(),
            )
        }
    };
    let cancelled = cancel(pending.id.clone()).await?;
    assert_eq!(cancelled.state(), TaskState::Cancelled, "pending: at once");
    cancel(running.id.clone()).await?;
    stack
        .wait_tasks(std::slice::from_ref(&running.id), TaskState::Cancelled)
        .await?;
    wait_gone(sleeper).await?;
    // Again: no-ops that answer with the final state.
    assert_eq!(
        cancel(running.id.clone()).await?.state(),
        TaskState::Cancelled
    );
    assert_eq!(
        cancel(pending.id.clone()).await?.state(),
        TaskState::Cancelled
    );

    next_task_runs(&mut stack, &workflow.id, &done).await
}

#[tokio::test]
async fn retries_are_spaced_by_the_policy_and_a_task_out_of_attempts_is_dead_lettered()
-> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack.create_agent("worker", am::RestartMode::Never).await?;
    let ms = |millis: i32| {
        Some(prost_types::Duration {
            seconds: 0,
            nanos: millis * 1_000_000,
        })
    };
    let workflow = stack
        .workflows
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: "flaky".into(),
                agent_id: agent.id.clone(),
                enabled: true,
                prompt_template: "exit 1".into(),
                max_attempts: 4,
                retry: Some(sched::RetryPolicy {
                    initial_backoff: ms(400),
                    max_backoff: ms(800),
                    jitter: Some(0.0),
                    retry_failed: true,
                    retry_timed_out: None,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let task = stack.trigger(&workflow.id, "once", "once").await?;
    stack
        .wait_tasks(std::slice::from_ref(&task.id), TaskState::Failed)
        .await?;
    let task = stack
        .workflows
        .get_task(sched::GetTaskRequest { task_id: task.id })
        .await?
        .into_inner();
    assert_eq!(task.attempts, 4);
    assert!(task.dead_letter, "{task:?}");
    assert_eq!(task.history.len(), 4, "{task:?}");
    // From the stored times: each retry started no earlier than its
    // backoff after the previous attempt ended (400, 800, 800 ms), and not
    // much later (runners re-check every 200 ms in tests).
    let at = |t: &Option<prost_types::Timestamp>| {
        let t = t.expect("timestamp");
        t.seconds as f64 + f64::from(t.nanos) / 1e9
    };
    for (pair, backoff) in task.history.windows(2).zip([0.4, 0.8, 0.8]) {
        let gap = at(&pair[1].start_time) - at(&pair[0].end_time);
        assert!(
            gap >= backoff - 0.01 && gap < backoff + 1.0,
            "attempt {} started {gap:.3}s after the previous one ended; backoff {backoff}s",
            pair[1].attempt
        );
    }
    let dead = stack
        .workflows
        .list_tasks(sched::ListTasksRequest {
            workflow_id: workflow.id.clone(),
            dead_letter: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .tasks;
    assert_eq!(dead.len(), 1);
    Ok(())
}

#[tokio::test]
async fn the_tool_policy_is_delivered_unchanged_across_restarts_and_reconnects()
-> anyhow::Result<()> {
    let options = StackOptions {
        agent_proxy: true,
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options).await?;
    let agent = stack
        .create_agent("worker", am::RestartMode::OnFailure)
        .await?;
    let started = stack.scratch_file("started");
    let template = format!(
        "echo {{{{title}}}} >> {}; sleep {{{{body}}}}; printf '%s|%s|%s' \"$SHEPHERD_ALLOWED_TOOLS\" \"$SHEPHERD_DENIED_TOOLS\" \"$SHEPHERD_ASK_TOOLS\"",
        started.display()
    );
    let workflow = stack
        .workflows
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: "tools".into(),
                agent_id: agent.id.clone(),
                enabled: true,
                prompt_template: template,
                tool_policy: Some(sched::ToolPolicy {
                    allowed_tools: vec!["Read".into(), "Bash(git *)".into()],
                    denied_tools: vec!["Write".into()],
                    ask_tools: vec!["Deploy".into()],
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    assert_eq!(
        workflow.tool_policy.as_ref().map(|p| p.allowed_tools.len()),
        Some(2),
        "{workflow:?}"
    );
    let proxy = stack.agent_proxy.take().expect("agent proxy");
    let workflows = stack.workflows.clone();
    let run = |key: &'static str, seconds: &'static str| {
        let mut client = workflows.clone();
        let workflow_id = workflow.id.clone();
        async move {
            anyhow::Ok(
                client
                    .trigger_workflow(sched::TriggerWorkflowRequest {
                        workflow_id,
                        idempotency_key: key.into(),
                        fields: Some(sched::TaskFields {
                            title: key.into(),
                            body: seconds.into(),
                            ..Default::default()
                        }),
                        timeout: None,
                        priority: 0,
                    })
                    .await?
                    .into_inner()
                    .id,
            )
        }
    };
    let mut tasks = vec![run("before", "0").await?];
    stack.wait_tasks(&tasks, TaskState::Succeeded).await?;

    // After a restart of the agent.
    let restarted = stack.restart_agent(&agent.id).await?;
    stack
        .wait_agent_ready(&agent.id, restarted.generation)
        .await?;
    tasks.push(run("after-restart", "0").await?);
    stack.wait_tasks(&tasks, TaskState::Succeeded).await?;

    // Redelivered after a reconnect in the middle of the task.
    tasks.push(run("across-reconnect", "1").await?);
    shepherd_testkit::eventually(shepherd_e2e::WAIT, "the task to start", || async {
        Ok(shepherd_e2e::lines(&started)
            .contains(&"across-reconnect".to_owned())
            .then_some(()))
    })
    .await?;
    proxy.cut();
    let client = stack.workflows.clone();
    let id = tasks[2].clone();
    shepherd_testkit::eventually(shepherd_e2e::WAIT, "the attempt lost", || {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            let task = client
                .get_task(sched::GetTaskRequest { task_id: id })
                .await?
                .into_inner();
            Ok((task.state() == TaskState::Pending).then_some(()))
        }
    })
    .await?;
    proxy.restore();
    tasks.push(run("after-reconnect", "0").await?);
    let done = stack.wait_tasks(&tasks, TaskState::Succeeded).await?;
    for task in done {
        assert_eq!(task.output, "Read,Bash(git *)|Write|Deploy", "{}", task.id);
    }
    Ok(())
}
