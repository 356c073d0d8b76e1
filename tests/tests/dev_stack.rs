//! The README's first command: `scripts/dev` brings up the whole stack with
//! a demo agent and workflow, and Ctrl-C (SIGINT to its process group, as a
//! terminal sends it) stops everything, leaving no process behind.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use shepherd_proto::agentmanager::v1::{self as am, agent_manager_client::AgentManagerClient};
use shepherd_proto::scheduler::v1::{
    self as sched, RunnerState, scheduler_client::SchedulerClient,
};
use shepherd_testkit::{eventually, process_alive};
use tokio::io::{AsyncBufReadExt, BufReader};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test]
async fn dev_stack_starts_with_a_demo_and_ctrl_c_leaves_nothing_behind() -> anyhow::Result<()> {
    if shepherd_testkit::grpcurl()?.is_none() {
        return Ok(()); // the dev script needs grpcurl (scripts/test installs it)
    }
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let state = std::env::temp_dir().join(format!("shepherd-dev-{}", uuid::Uuid::new_v4()));
    let database = format!("shepherd_devtest_{}", uuid::Uuid::new_v4().simple());
    let manager = format!("127.0.0.1:{}", free_port()?);
    let scheduler = format!("127.0.0.1:{}", free_port()?);
    let console = format!("127.0.0.1:{}", free_port()?);
    let mut dev = tokio::process::Command::new("bash")
        .arg(root.join("scripts/dev"))
        .env("DATABASE_URL", shepherd_testkit::admin_url())
        .env("DEV_DATABASE", &database)
        .env("MANAGER_ADDR", &manager)
        .env("SCHEDULER_ADDR", &scheduler)
        .env("WEBHOOK_ADDR", format!("127.0.0.1:{}", free_port()?))
        .env("CONSOLE_ADDR", &console)
        .env("STATE_DIR", &state)
        .env("SKIP_BUILD", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let group = Pid::from_raw(i32::try_from(dev.id().context("no pid")?)?);
    let mut lines = BufReader::new(dev.stderr.take().context("no stderr")?).lines();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("Shepherd is running") {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("scripts/dev ended before the stack was up")
    })
    .await
    .context("the dev stack did not come up within 120s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // The first calls show something happening: a ready demo agent, and its
    // workflow's runner running.
    let mut agents =
        AgentManagerClient::new(shepherd_testkit::channel(&format!("http://{manager}")).await?);
    let demo = eventually(shepherd_e2e::WAIT, "the demo agent to be ready", || {
        let mut agents = agents.clone();
        async move {
            let listed = agents
                .list_agents(am::ListAgentsRequest::default())
                .await?
                .into_inner();
            Ok(listed
                .agents
                .into_iter()
                .find(|a| a.name == "demo-agent" && a.status() == am::AgentStatus::Ready))
        }
    })
    .await?;
    let workflows =
        SchedulerClient::new(shepherd_testkit::channel(&format!("http://{scheduler}")).await?);
    eventually(shepherd_e2e::WAIT, "the demo workflow's runner", || {
        let mut workflows = workflows.clone();
        async move {
            let runners = workflows
                .list_runners(sched::ListRunnersRequest::default())
                .await?
                .into_inner()
                .runners;
            Ok(runners
                .iter()
                .any(|r| r.state() == RunnerState::Running)
                .then_some(()))
        }
    })
    .await?;
    let _ = agents
        .get_agent(am::GetAgentRequest {
            agent_id: demo.id.clone(),
        })
        .await?;
    // And the console serves the fleet.
    let session =
        shepherd_e2e::http::request("GET", &format!("http://{console}/api/session"), &[], None)
            .await?;
    let cookie = session
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .to_owned();
    let fleet = shepherd_e2e::http::request(
        "GET",
        &format!("http://{console}/api/agents"),
        &[("cookie", cookie)],
        None,
    )
    .await?;
    assert_eq!(fleet.json()[0]["name"], "demo-agent", "{}", fleet.body);

    // Ctrl-C.
    killpg(group, Signal::SIGINT)?;
    let status = tokio::time::timeout(Duration::from_secs(30), dev.wait())
        .await
        .context("scripts/dev did not stop within 30s of Ctrl-C")??;
    // bash exits by itself after its trap, or re-raises SIGINT.
    assert!(
        status.code().is_some() || status.signal() == Some(Signal::SIGINT as i32),
        "{status:?}"
    );
    eventually(shepherd_e2e::WAIT, "every process to be gone", || async {
        let group_gone = killpg(group, None).is_err();
        let agent_gone = !process_alive(demo.pid)
            || std::fs::read_to_string(format!("/proc/{}/stat", demo.pid))
                .map_or(true, |s| s.contains(") Z "));
        let ports_closed = std::net::TcpStream::connect(&manager).is_err()
            && std::net::TcpStream::connect(&scheduler).is_err()
            && std::net::TcpStream::connect(&console).is_err();
        Ok((group_gone && agent_gone && ports_closed).then_some(()))
    })
    .await?;

    let admin = shepherd_testkit::admin_url();
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await?;
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}
