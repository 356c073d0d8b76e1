//! A workflow's max_concurrency bounds how many of its tasks are in flight
//! at once, for each workflow on its own, also when many runners claim at
//! the same moment (their claims share one statement).

use shepherd_e2e::{Stack, StackOptions, lines};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, TaskState};

/// Most tasks running at once, from a file of "start"/"end" lines.
fn peak_running(lines: &[String]) -> usize {
    let (mut running, mut peak) = (0usize, 0usize);
    for line in lines {
        match line.as_str() {
            "start" => {
                running += 1;
                peak = peak.max(running);
            }
            _ => running = running.saturating_sub(1),
        }
    }
    peak
}

#[tokio::test]
async fn max_concurrency_bounds_tasks_in_flight_per_workflow() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let mut workflows = Vec::new();
    for (name, limit) in [("pair", 2u32), ("trio", 3u32)] {
        let agent = stack.create_agent(name, am::RestartMode::Never).await?;
        let file = stack.scratch_file(&format!("{name}.log"));
        let workflow = stack
            .workflows
            .create_workflow(sched::CreateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    name: name.to_owned(),
                    agent_id: agent.id.clone(),
                    enabled: false,
                    max_concurrency: limit,
                    prompt_template: format!(
                        "echo start >> {0}; sleep 1; echo end >> {0}",
                        file.display()
                    ),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner();
        stack.wait_agent_ready(&agent.id, 1).await?;
        workflows.push((workflow, limit, file));
    }
    // Queue while disabled, then enable both: their runners claim together.
    let mut tasks = Vec::new();
    for (workflow, _, _) in &workflows {
        for n in 0..6 {
            tasks.push(stack.trigger(&workflow.id, &format!("t{n}"), "").await?.id);
        }
    }
    for (workflow, _, _) in &workflows {
        stack
            .workflows
            .update_workflow(sched::UpdateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    id: workflow.id.clone(),
                    enabled: true,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["enabled".into()],
                }),
            })
            .await?;
    }
    stack.wait_tasks(&tasks, TaskState::Succeeded).await?;

    for (workflow, limit, file) in &workflows {
        let lines = lines(file);
        assert_eq!(
            lines.len(),
            12,
            "{}: every task ran once: {lines:?}",
            workflow.name
        );
        // Never above the limit, and the limit is used: tasks that fit run
        // side by side (each sleeps a second, so they overlap).
        assert_eq!(
            peak_running(&lines),
            *limit as usize,
            "{}: {lines:?}",
            workflow.name
        );
    }
    Ok(())
}
