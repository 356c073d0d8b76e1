//! Budgets with real processes: an agent reports cost past its workflow's
//! budget; dispatch stops, the running task is told (the reference agent
//! ends it after the grace), the agent-manager logs `BudgetExhausted` and
//! raises an approval; the usage survives both services' restarts; the
//! approval resumes dispatch.

use shepherd_e2e::{Stack, StackOptions, WAIT};
use shepherd_proto::agentmanager::v1::{self as am, agent_event};
use shepherd_proto::scheduler::v1::{self as sched, TaskState};
use shepherd_testkit::eventually;

async fn budgets(stack: &Stack) -> anyhow::Result<Vec<sched::Budget>> {
    Ok(stack
        .workflows
        .clone()
        .list_budgets(sched::ListBudgetsRequest {})
        .await?
        .into_inner()
        .budgets)
}

async fn verdict(stack: &Stack, workflow: &str) -> anyhow::Result<sched::WorkflowDiagnosis> {
    Ok(stack
        .workflows
        .clone()
        .explain_workflow(sched::ExplainWorkflowRequest {
            workflow_id: workflow.into(),
        })
        .await?
        .into_inner())
}

#[tokio::test]
async fn cost_past_a_budget_stops_dispatch_tells_the_task_and_asks_to_go_on() -> anyhow::Result<()>
{
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("spender", am::RestartMode::OnFailure)
        .await?;
    // "spend" reports cost 6 twice (12 in all), then would run a minute;
    // any other task just says it ran.
    let workflow = stack
        .create_workflow(
            "spend",
            &agent.id,
            true,
            "case {{title}} in spend) echo '::usage 100 50 6'; sleep 0.2; echo '::usage 100 50 6'; sleep 60;; *) echo ran {{title}};; esac",
        )
        .await?;
    let budget = stack
        .workflows
        .clone()
        .put_budget(sched::PutBudgetRequest {
            budget: Some(sched::Budget {
                workflow_id: workflow.id.clone(),
                calendar: sched::CalendarPeriod::Day as i32,
                max_cost: 10.0,
                grace: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    assert!(budget.resets_at.is_some(), "a calendar day resets");

    let spend = stack.trigger(&workflow.id, "spend", "spend").await?.id;
    // The task is told and, past the grace, ended by the reference agent.
    let ended = stack
        .wait_tasks(std::slice::from_ref(&spend), TaskState::Failed)
        .await?
        .remove(0);
    assert!(
        ended.last_error.contains("budget spent") || ended.output.contains("budget spent"),
        "{} / {}",
        ended.last_error,
        ended.output
    );
    // The agent-manager logged it and asks whether to go on.
    let events = stack.agent_events(&agent.id).await?;
    let exhausted = events
        .iter()
        .find_map(|event| match &event.kind {
            Some(agent_event::Kind::BudgetExhausted(spent)) => Some(spent.clone()),
            _ => None,
        })
        .expect("a BudgetExhausted event");
    assert_eq!(exhausted.workflow_id, workflow.id);
    assert!(
        exhausted.summary.contains("cost 12 of 10"),
        "{}",
        exhausted.summary
    );
    let approval = stack
        .agents
        .clone()
        .get_approval(am::GetApprovalRequest {
            approval_id: exhausted.approval_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(approval.state(), am::ApprovalState::Pending);
    assert_eq!(approval.tool, "budget");

    // Nothing more is dispatched.
    let next = stack.trigger(&workflow.id, "next", "next").await?.id;
    let diagnosis = verdict(&stack, &workflow.id).await?;
    assert_eq!(
        diagnosis.verdict(),
        sched::Verdict::BudgetExhausted,
        "{}",
        diagnosis.summary
    );

    // The usage survives both services' restarts; the budget stays spent.
    stack.manager.kill().await?;
    stack.restart_manager().await?;
    stack.wait_agent_ready(&agent.id, agent.generation).await?;
    stack.kill_scheduler().await?;
    stack.start_scheduler().await?;
    let listed = budgets(&stack).await?;
    assert_eq!(listed.len(), 1);
    let usage = listed[0].usage.unwrap_or_default();
    assert_eq!(usage.cost, 12.0);
    assert_eq!((usage.input_tokens, usage.output_tokens), (200, 100));
    assert!(
        listed[0].exhausted.contains("cost 12 of 10"),
        "{:?}",
        listed[0]
    );
    let waiting = stack
        .workflows
        .clone()
        .get_task(sched::GetTaskRequest {
            task_id: next.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (waiting.state(), waiting.attempts),
        (TaskState::Pending, 0),
        "not dispatched while the budget is spent"
    );

    // Approved: the day's budget grows by one more, and dispatch resumes.
    stack
        .agents
        .clone()
        .decide_approval(am::DecideApprovalRequest {
            approval_id: exhausted.approval_id.clone(),
            decision: am::Decision::Approve as i32,
            comment: "one more".into(),
        })
        .await?;
    let ran = stack
        .wait_tasks(std::slice::from_ref(&next), TaskState::Succeeded)
        .await?
        .remove(0);
    assert!(ran.output.contains("ran next"), "{}", ran.output);
    eventually(WAIT, "the budget no longer spent", || async {
        let listed = budgets(&stack).await?;
        Ok(listed[0].exhausted.is_empty().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn bad_budgets_are_refused_and_nothing_is_stored() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("frugal", am::RestartMode::OnFailure)
        .await?;
    let workflow = stack
        .create_workflow("frugal", &agent.id, true, "echo hi")
        .await?;
    let day = sched::CalendarPeriod::Day as i32;
    let cases = [
        // No cap.
        sched::Budget {
            workflow_id: workflow.id.clone(),
            calendar: day,
            ..Default::default()
        },
        // Both a workflow and an agent.
        sched::Budget {
            workflow_id: workflow.id.clone(),
            agent_id: agent.id.clone(),
            calendar: day,
            max_cost: 1.0,
            ..Default::default()
        },
        // No period, and a rolling window of zero.
        sched::Budget {
            workflow_id: workflow.id.clone(),
            max_cost: 1.0,
            ..Default::default()
        },
        sched::Budget {
            workflow_id: workflow.id.clone(),
            rolling: Some(prost_types::Duration::default()),
            max_cost: 1.0,
            ..Default::default()
        },
        // A negative cost, an absurd one.
        sched::Budget {
            workflow_id: workflow.id.clone(),
            calendar: day,
            max_cost: -1.0,
            ..Default::default()
        },
        sched::Budget {
            workflow_id: workflow.id.clone(),
            calendar: day,
            max_cost: f64::INFINITY,
            ..Default::default()
        },
    ];
    for budget in cases {
        let refused = stack
            .workflows
            .clone()
            .put_budget(sched::PutBudgetRequest {
                budget: Some(budget.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{budget:?}");
    }
    let unknown = stack
        .workflows
        .clone()
        .put_budget(sched::PutBudgetRequest {
            budget: Some(sched::Budget {
                agent_id: uuid::Uuid::now_v7().to_string(),
                calendar: day,
                max_tasks: 5,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(budgets(&stack).await?.is_empty(), "nothing stored");
    Ok(())
}

/// An agent and a workflow with a budget of one task a day; its first task
/// run (which spends the budget). `env` goes to both services.
async fn one_task_a_day(
    env: Vec<(&'static str, String)>,
) -> anyhow::Result<(Stack, am::Agent, sched::Workflow)> {
    let mut stack = Stack::start(StackOptions {
        env,
        ..StackOptions::default()
    })
    .await?;
    let agent = stack
        .create_agent("one-a-day", am::RestartMode::OnFailure)
        .await?;
    let workflow = stack
        .create_workflow("daily", &agent.id, true, "echo ran {{title}}")
        .await?;
    stack
        .workflows
        .clone()
        .put_budget(sched::PutBudgetRequest {
            budget: Some(sched::Budget {
                workflow_id: workflow.id.clone(),
                calendar: sched::CalendarPeriod::Day as i32,
                max_tasks: 1,
                ..Default::default()
            }),
        })
        .await?;
    let first = stack.trigger(&workflow.id, "one", "one").await?.id;
    stack
        .wait_tasks(std::slice::from_ref(&first), TaskState::Succeeded)
        .await?;
    Ok((stack, agent, workflow))
}

/// Waits for the agent's budget approval and its `BudgetExhausted`; they
/// are there once each.
async fn asked_once(stack: &Stack, agent: &str) -> anyhow::Result<String> {
    let approval = eventually(WAIT, "the budget's approval and event", || async {
        let events = stack.agent_events(agent).await?;
        let exhausted: Vec<String> = events
            .iter()
            .filter_map(|event| match &event.kind {
                Some(agent_event::Kind::BudgetExhausted(spent)) => Some(spent.approval_id.clone()),
                _ => None,
            })
            .collect();
        Ok(exhausted.first().cloned())
    })
    .await?;
    let approvals = stack
        .agents
        .clone()
        .list_approvals(am::ListApprovalsRequest {
            agent_id: agent.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .approvals;
    assert_eq!(approvals.len(), 1, "one approval: {approvals:?}");
    assert_eq!(approvals[0].id, approval);
    Ok(approval)
}

/// The second task waits; approving the budget's approval runs it.
async fn approving_resumes(
    stack: &mut Stack,
    workflow: &sched::Workflow,
    approval: String,
) -> anyhow::Result<()> {
    let second = stack.trigger(&workflow.id, "two", "two").await?.id;
    eventually(WAIT, "BUDGET_EXHAUSTED", || async {
        let diagnosis = verdict(stack, &workflow.id).await?;
        Ok((diagnosis.verdict() == sched::Verdict::BudgetExhausted).then_some(()))
    })
    .await?;
    stack
        .agents
        .clone()
        .decide_approval(am::DecideApprovalRequest {
            approval_id: approval,
            decision: am::Decision::Approve as i32,
            comment: String::new(),
        })
        .await?;
    stack
        .wait_tasks(std::slice::from_ref(&second), TaskState::Succeeded)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_scheduler_crash_before_telling_the_manager_of_a_spent_budget_loses_nothing()
-> anyhow::Result<()> {
    let failpoint = (
        "SHEPHERD_FAILPOINTS",
        "scheduler.before_budget_report=abort".to_owned(),
    );
    let (mut stack, agent, workflow) = one_task_a_day(vec![failpoint]).await?;
    let scheduler = stack.scheduler.as_mut().expect("a scheduler");
    assert!(
        scheduler.wait_exit(WAIT).await?,
        "the scheduler aborts with the episode stored, the manager not told"
    );
    stack.options.env.clear();
    stack.start_scheduler().await?;
    let approval = asked_once(&stack, &agent.id).await?;
    approving_resumes(&mut stack, &workflow, approval).await
}

#[tokio::test]
async fn a_manager_crash_between_a_budget_approval_and_its_event_loses_nothing()
-> anyhow::Result<()> {
    let failpoint = (
        "SHEPHERD_FAILPOINTS",
        "manager.between_budget_approval_and_event=abort".to_owned(),
    );
    let (mut stack, agent, workflow) = one_task_a_day(vec![failpoint]).await?;
    assert!(
        stack.manager.wait_exit(WAIT).await?,
        "the manager aborts with the approval stored, no event"
    );
    stack.options.env.clear();
    stack.restart_manager().await?;
    stack.wait_agent_ready(&agent.id, agent.generation).await?;
    let approval = asked_once(&stack, &agent.id).await?;
    approving_resumes(&mut stack, &workflow, approval).await
}
