//! Tasks as a contract: an agent receives a task's fields as data, and no
//! field can change what runs, in the reference agent's shell mode and in
//! its exec mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shepherd_e2e::{Stack, StackOptions};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, TaskState};
use shepherd_testkit::bin_path;

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
        .agents
        .create_agent(am::CreateAgentRequest {
            agent: Some(am::Agent {
                name: name.to_owned(),
                command: bin_path("shepherd-agent")?.display().to_string(),
                args,
                env: [("OUT_DIR".to_owned(), out.display().to_string())].into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    stack.wait_agent_ready(&agent.id, agent.generation).await?;
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
    let exec_args = ["--exec", "/bin/sh", "--", "-c", program]
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
