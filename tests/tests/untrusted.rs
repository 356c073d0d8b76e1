//! Agents are untrusted: an agent, and every process its tasks start, is
//! treated as hostile. Each test here tries one attack with real processes
//! and checks that it gets nothing of the control plane.

use shepherd_e2e::{Stack, StackOptions};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::TaskState;

/// A task whose output is everything a real tool may print: NUL bytes,
/// bytes that are not UTF-8, ANSI escapes and carriage returns, 10 MiB in
/// one line with no newline, then 200,000 short lines, and more of the
/// same on stderr.
const HOSTILE_OUTPUT: &str = "printf 'a\\000b\\377\\033[31mred\\033[0m\\rX\\n'; \
     head -c 10485760 /dev/zero | tr '\\000' y; echo; seq 1 200000; \
     printf 'err\\000\\377' >&2; head -c 1048576 /dev/zero >&2";

/// Starts a noisy agent running `HOSTILE_OUTPUT` and a quiet one whose
/// tasks must complete meanwhile; returns the noisy task's output.
async fn hostile_output_beside_a_quiet_agent(stack: &mut Stack) -> anyhow::Result<String> {
    let noisy = stack.create_agent("noisy", am::RestartMode::Never).await?;
    let quiet = stack.create_agent("quiet", am::RestartMode::Never).await?;
    let noisy_flow = stack
        .create_workflow("noisy", &noisy.id, true, HOSTILE_OUTPUT)
        .await?;
    let quiet_flow = stack
        .create_workflow("quiet", &quiet.id, true, "echo fine")
        .await?;
    let hostile = stack.trigger(&noisy_flow.id, "hostile", "").await?;
    let mut quiet_tasks = Vec::new();
    for n in 0..5 {
        quiet_tasks.push(
            stack
                .trigger(&quiet_flow.id, &format!("q{n}"), "")
                .await?
                .id,
        );
    }
    stack.wait_tasks(&quiet_tasks, TaskState::Succeeded).await?;
    let done = stack
        .wait_tasks(std::slice::from_ref(&hostile.id), TaskState::Succeeded)
        .await?;
    // The manager still does what it is asked for every agent.
    stack.restart_agent(&quiet.id).await?;
    let restarted = stack.agent(&quiet.id).await?;
    stack
        .wait_agent_ready(&quiet.id, restarted.generation)
        .await?;
    Ok(done[0].output.clone())
}

#[tokio::test]
async fn hostile_output_finishes_readably_and_stops_no_other_agent() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let output = hostile_output_beside_a_quiet_agent(&mut stack).await?;
    // The NUL is shown, not lost; what was not UTF-8 is a replacement
    // character; the output is bounded.
    assert!(
        output.starts_with("a\u{2400}b\u{FFFD}"),
        "{:?}",
        &output[..40.min(output.len())]
    );
    assert!(output.len() <= 64 * 1024, "{} bytes kept", output.len());
    Ok(())
}

/// The event writer's own defence, with the edge's cleaning switched off
/// (failpoint): the database refuses the report's output, so the report is
/// stored in its safe form on its own, and no other agent waits on it.
#[tokio::test]
async fn an_entry_the_database_refuses_holds_back_no_one() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        env: vec![(
            "SHEPHERD_FAILPOINTS",
            "manager.agent_text_unchecked=skip".to_owned(),
        )],
        ..StackOptions::default()
    })
    .await?;
    let output = hostile_output_beside_a_quiet_agent(&mut stack).await?;
    assert_eq!(output, "[the output could not be stored]");
    Ok(())
}

/// Told to listen beyond loopback with no credential, every service
/// refuses to start (before it touches anything), with one line that says
/// what to set.
#[tokio::test]
async fn no_service_serves_an_open_api_off_loopback() -> anyhow::Result<()> {
    for (binary, listen) in [
        ("agent-manager", "LISTEN_ADDR"),
        ("scheduler", "LISTEN_ADDR"),
        ("shepherd-console", "CONSOLE_LISTEN_ADDR"),
    ] {
        let output = tokio::process::Command::new(shepherd_testkit::bin_path(binary)?)
            .env_clear()
            .env(listen, "0.0.0.0:0")
            // Never reached: the check comes first.
            .env("DATABASE_URL", "postgres://127.0.0.1:1/unreachable")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(shepherd_e2e::WAIT, output).await??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{binary} started: {stderr}");
        let refusal: Vec<&str> = stderr
            .lines()
            .filter(|line| line.contains("without authentication"))
            .collect();
        assert_eq!(refusal.len(), 1, "{binary}: {stderr}");
        assert!(
            refusal[0].contains("TOKEN") && refusal[0].contains("SHEPHERD_ALLOW_OPEN_API=true"),
            "{binary}: {stderr}"
        );
        assert!(
            !stderr.contains("could not"),
            "{binary} got further: {stderr}"
        );
    }
    Ok(())
}

/// Open on purpose (SHEPHERD_ALLOW_OPEN_API): it starts, and says so in
/// GetManagerInfo.
#[tokio::test]
async fn an_api_open_by_choice_says_so() -> anyhow::Result<()> {
    let db = shepherd_testkit::TestDb::create().await?;
    let logs = std::env::temp_dir().join(format!("shepherd-open-{}", db.name));
    let manager = shepherd_testkit::ServiceProcess::start(
        "agent-manager",
        &["--listen".to_owned(), "0.0.0.0:0".to_owned()],
        &[
            ("DATABASE_URL", db.url.clone()),
            ("AGENT_LOG_DIR", logs.display().to_string()),
            ("CGROUP_PARENT", db.cgroup_parent()),
            ("SHEPHERD_ALLOW_OPEN_API", "true".to_owned()),
        ],
    )
    .await?;
    let url = format!("http://127.0.0.1:{}", manager.addr.port());
    let mut client =
        am::agent_manager_client::AgentManagerClient::new(shepherd_testkit::channel(&url).await?);
    let info = client
        .get_manager_info(am::GetManagerInfoRequest {})
        .await?
        .into_inner();
    assert!(info.security_warning.contains("open"), "{info:?}");
    drop(manager);
    let _ = std::fs::remove_dir_all(logs);
    Ok(())
}

/// What a task tries from inside: the control plane's environment and its
/// agent's credential, wherever it can reach. Each attempt prints what it
/// found, or why it could not.
const LOOK_FOR_SECRETS: &str = r#"
for target in "manager:$MANAGER_PID" "scheduler:$SCHEDULER_PID" "agent:$PPID" "self:$$"; do
  name=${target%%:*}; pid=${target#*:}
  if environ=$(tr '\0' '\n' < /proc/$pid/environ 2>/dev/null); then
    echo "$environ" | grep -E '^(DATABASE_URL|SHEPHERD_API_TOKEN|SHEPHERD_API_TOKENS|SHEPHERD_SESSION_TOKEN|SHEPHERD_AGENT_CREDENTIAL)=.' \
      | grep -v '=\*\**$' | sed "s/^/FOUND $name environ: /"
  else
    echo "DENIED $name environ"
  fi
  if head -c1 /proc/$pid/mem >/dev/null 2>&1 || python3 -c "
import sys
pid = sys.argv[1]
start = int(open(f'/proc/{pid}/maps').readline().split('-')[0], 16)
with open(f'/proc/{pid}/mem', 'rb') as mem:
    mem.seek(start); mem.read(16)
" "$pid" 2>/dev/null; then
    [ "$name" = self ] || echo "FOUND $name memory readable"
  else
    echo "DENIED $name memory"
  fi
done
env | grep -E '^(DATABASE_URL|SHEPHERD_API_TOKEN|SHEPHERD_SESSION_TOKEN|SHEPHERD_AGENT_CREDENTIAL|SECRET_OF_THE_AGENT)=' | sed 's/^/FOUND own env: /'
grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
"#;

/// A task of the reference agent looks for the manager's and the
/// scheduler's secrets and for its agent's credential in every environment
/// and memory within its reach (its own, its agent's, the control
/// plane's): it finds none, and holds no privilege to get them.
#[tokio::test]
async fn a_task_finds_no_secret_of_its_agent_or_the_control_plane() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        token: Some("control-plane-token".to_owned()),
        ..StackOptions::default()
    })
    .await?;
    let agent = stack
        .create_agent_with(am::Agent {
            name: "curious".to_owned(),
            env: [("SECRET_OF_THE_AGENT".to_owned(), "not-for-tasks".to_owned())].into(),
            ..Default::default()
        })
        .await?;
    let manager_pid = stack.manager.pid().unwrap_or_default();
    let scheduler_pid = stack
        .scheduler
        .as_ref()
        .and_then(|scheduler| scheduler.pid())
        .unwrap_or_default();
    let script =
        format!("MANAGER_PID={manager_pid} SCHEDULER_PID={scheduler_pid}\n{LOOK_FOR_SECRETS}");
    let workflow = stack
        .create_workflow("curious", &agent.id, true, &script)
        .await?;
    let task = stack.trigger(&workflow.id, "look", "").await?;
    let done = stack
        .wait_tasks(std::slice::from_ref(&task.id), TaskState::Succeeded)
        .await?;
    let output = &done[0].output;
    assert!(!output.contains("FOUND"), "{output}");
    for reached in [
        "DENIED manager environ",
        "DENIED manager memory",
        "DENIED scheduler environ",
        "DENIED agent memory",
    ] {
        assert!(output.contains(reached), "{reached}: {output}");
    }
    assert!(output.contains("NoNewPrivs:\t1"), "{output}");
    assert!(output.contains("CapEff:\t0000000000000000"), "{output}");
    // The agent still holds its one session: nothing took it over.
    let after = stack.agent(&agent.id).await?;
    assert_eq!(after.generation, agent.generation);
    assert_eq!(after.status(), am::AgentStatus::Ready);
    Ok(())
}
