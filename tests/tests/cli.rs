//! A scripted session with the `shepherd` CLI against the real stack: the
//! first hour of a new user, and the exit codes scripts rely on.

use std::process::Output;

use serde_json::Value;
use shepherd_e2e::{Stack, StackOptions};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::RunnerState;
use shepherd_testkit::{bin_path, eventually};

const TOKEN: &str = "cli-token";

struct Cli {
    manager: String,
    scheduler: String,
    token: Option<String>,
}

impl Cli {
    async fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut command = tokio::process::Command::new(bin_path("shepherd")?);
        command
            .args(args)
            .env("SHEPHERD_AGENT_MANAGER_URL", &self.manager)
            .env("SHEPHERD_SCHEDULER_URL", &self.scheduler)
            .env_remove("SHEPHERD_TOKEN");
        if let Some(token) = &self.token {
            command.env("SHEPHERD_TOKEN", token);
        }
        Ok(tokio::time::timeout(shepherd_e2e::WAIT, command.output()).await??)
    }

    /// Runs a command that must succeed and prints JSON; returns it.
    async fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let output = self.run(&all).await?;
        anyhow::ensure!(
            output.status.success(),
            "shepherd {args:?} failed ({:?}): {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    async fn code(&self, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let output = self.run(args).await?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }
}

#[tokio::test]
async fn a_cli_session_from_agent_to_recovered_workflow() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await?;
    let cli = Cli {
        manager: stack.manager.url(),
        scheduler: stack.scheduler.as_ref().expect("scheduler").url(),
        token: Some(TOKEN.into()),
    };

    // An agent from a TOML file, with a memory limit where this machine
    // enforces one.
    let enforces_memory = stack
        .agents
        .clone()
        .get_manager_info(am::GetManagerInfoRequest {})
        .await?
        .into_inner()
        .enforces_memory;
    let limits = if enforces_memory {
        "[limits]\nmemory = \"256MiB\"\n"
    } else {
        ""
    };
    let spec = stack.scratch_file("agent.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"cli-agent\"\ncommand = \"{}\"\n[labels]\nteam = \"docs\"\n[restart]\nmode = \"never\"\n{limits}",
            bin_path("shepherd-agent")?.display()
        ),
    )?;
    let agent = cli
        .json(&["agents", "create", "--file", spec.to_str().expect("path")])
        .await?;
    assert_eq!(agent["name"], "cli-agent");
    assert_eq!(agent["labels"]["team"], "docs");
    let agent_id = agent["id"].as_str().expect("id").to_owned();
    stack.wait_agent_ready(&agent_id, 1).await?;

    let listed = cli
        .json(&["agents", "list", "--label", "team=docs"])
        .await?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let got = cli.json(&["agents", "get", "cli-agent"]).await?;
    assert_eq!(got["status"], "ready");
    assert!(got["usage"]["processes"].as_u64() >= Some(1), "{got}");
    assert!(got["usage"]["memory_bytes"].as_u64() > Some(0), "{got}");
    if enforces_memory {
        assert_eq!(got["limits"]["memory_bytes"], 256 << 20);
    }
    let manager = cli.json(&["manager"]).await?;
    assert_eq!(manager["enforces_memory"], enforces_memory, "{manager}");
    // The node it is, among the nodes sharing the database.
    assert_eq!(manager["nodes"][0]["name"], manager["node"], "{manager}");
    assert_eq!(manager["nodes"][0]["live"], true, "{manager}");
    assert_eq!(got["node"], manager["node"], "the agent's node: {got}");
    assert!(
        ["cgroup-v1", "cgroup-v2", "subreaper"]
            .contains(&manager["containment_mode"].as_str().unwrap_or("")),
        "{manager}"
    );
    let table = cli.run(&["agents", "list"]).await?;
    let table = String::from_utf8_lossy(&table.stdout);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.contains("CPU") && header.contains("MEMORY"),
        "a compact CPU / memory column: {table}"
    );
    let detail = cli.run(&["agents", "get", "cli-agent"]).await?;
    let detail = String::from_utf8_lossy(&detail.stdout);
    assert!(
        detail.contains("cpu time:") && detail.contains("processes:"),
        "{detail}"
    );

    // A workflow (agent named, not id'd) and two tasks.
    let workflow = cli
        .json(&[
            "workflows",
            "create",
            "--name",
            "cli-flow",
            "--agent",
            "cli-agent",
            "--template",
            "echo {{title}}",
        ])
        .await?;
    let workflow_id = workflow["id"].as_str().expect("id").to_owned();
    stack
        .wait_runner(&workflow_id, RunnerState::Running, "")
        .await?;
    let task = cli
        .json(&[
            "workflows",
            "trigger",
            "cli-flow",
            "--key",
            "a",
            "--title",
            "first",
        ])
        .await?;
    assert_eq!(task["id"], format!("{workflow_id}:a"));

    // Restart the agent; the runner recovers and new work completes.
    let restarted = cli.json(&["agents", "restart", "cli-agent"]).await?;
    assert_eq!(restarted["generation"], 2);
    stack.wait_agent_ready(&agent_id, 2).await?;
    cli.json(&[
        "workflows",
        "trigger",
        "cli-flow",
        "--key",
        "b",
        "--title",
        "second",
    ])
    .await?;
    let tasks = eventually(shepherd_e2e::WAIT, "both tasks to succeed", || async {
        let tasks = cli
            .json(&["tasks", "list", "cli-flow", "--state", "succeeded"])
            .await?;
        Ok((tasks.as_array().map(Vec::len) == Some(2)).then_some(tasks))
    })
    .await?;
    let outputs: Vec<&str> = tasks
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["output"].as_str())
        .collect();
    assert_eq!(outputs, ["first\n", "second\n"]);
    let runners = cli
        .json(&["runners", "list", "--agent", "cli-agent"])
        .await?;
    assert_eq!(runners[0]["state"], "running");

    // The event log, followed and resumed from a cursor.
    let watch = cli
        .run(&[
            "--output",
            "json",
            "events",
            "watch",
            "--agent",
            "cli-agent",
            "--limit",
            "3",
        ])
        .await?;
    assert!(watch.status.success());
    let events: Vec<Value> = String::from_utf8_lossy(&watch.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["created", "started", "ready"]);
    let cursor = events[2]["sequence"]
        .as_u64()
        .expect("sequence")
        .to_string();
    let resumed = cli
        .run(&[
            "--output", "json", "events", "watch", "--after", &cursor, "--limit", "1",
        ])
        .await?;
    let next: Value = serde_json::from_slice(&resumed.stdout)?;
    assert!(next["sequence"].as_u64().expect("sequence") > cursor.parse::<u64>()?);

    // One task followed to its end: every change, then the command exits.
    let followed = cli
        .run(&[
            "--output",
            "json",
            "tasks",
            "watch",
            &format!("{workflow_id}:b"),
        ])
        .await?;
    assert!(followed.status.success());
    let changes: Vec<Value> = String::from_utf8_lossy(&followed.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let states: Vec<&str> = changes
        .iter()
        .filter(|c| c["progress"].is_null())
        .filter_map(|c| c["state"].as_str())
        .collect();
    assert_eq!(states, ["pending", "dispatched", "succeeded"]);
    assert!(
        changes
            .iter()
            .any(|c| c["progress"]["output"].as_str() == Some("second\n")),
        "{changes:?}"
    );

    // Human output is a table.
    let table = cli.run(&["workflows", "list"]).await?;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("ID"), "{text}");
    assert!(text.contains("cli-flow"));

    cli.json(&["workflows", "disable", "cli-flow"]).await?;
    stack
        .wait_runner(&workflow_id, RunnerState::Stopped, "disabled")
        .await?;
    Ok(())
}

#[tokio::test]
async fn exit_codes_scripts_can_rely_on() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await?;
    let manager = stack.manager.url();
    let scheduler = stack.scheduler.as_ref().expect("scheduler").url();
    let cli = Cli {
        manager: manager.clone(),
        scheduler: scheduler.clone(),
        token: Some(TOKEN.into()),
    };

    let (code, stderr) = cli.code(&["agents", "get", "no-such-agent"]).await?;
    assert_eq!(code, 3, "{stderr}");
    let (code, stderr) = cli
        .code(&[
            "workflows",
            "create",
            "--name",
            "Bad Name",
            "--agent",
            &uuid::Uuid::new_v4().to_string(),
        ])
        .await?;
    assert_eq!(code, 2, "{stderr}");
    let (code, _) = cli.code(&["agents", "frobnicate"]).await?;
    assert_eq!(code, 2, "usage errors");
    let (code, stderr) = cli
        .code(&[
            "agents",
            "create",
            "--name",
            "x",
            "--command",
            "/bin/true",
            "--restart",
            "sometimes",
        ])
        .await?;
    assert_eq!(code, 2, "{stderr}");

    let anonymous = Cli {
        manager: manager.clone(),
        scheduler: scheduler.clone(),
        token: None,
    };
    let (code, stderr) = anonymous.code(&["agents", "list"]).await?;
    assert_eq!(code, 6, "{stderr}");
    assert!(
        stderr.contains("SHEPHERD_TOKEN"),
        "says what to do: {stderr}"
    );

    let nowhere = Cli {
        manager: "http://127.0.0.1:1".into(),
        scheduler,
        token: Some(TOKEN.into()),
    };
    let (code, stderr) = nowhere.code(&["agents", "list"]).await?;
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("is the service running"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn concurrency_keys_and_priorities_from_the_cli() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await?;
    let cli = Cli {
        manager: stack.manager.url(),
        scheduler: stack.scheduler.as_ref().expect("scheduler").url(),
        token: Some(TOKEN.into()),
    };
    stack
        .create_agent("cli-keyed", am::RestartMode::OnFailure)
        .await?;
    let key = cli
        .json(&["keys", "put", "provider:x", "--limit", "2"])
        .await?;
    assert_eq!(
        (key["name"].as_str(), key["max_running"].as_u64()),
        (Some("provider:x"), Some(2))
    );
    let workflow = cli
        .json(&[
            "workflows",
            "create",
            "--name",
            "keyed",
            "--agent",
            "cli-keyed",
            "--key",
            "provider:x",
            "--disabled",
            "--template",
            "echo {{title}}",
        ])
        .await?;
    assert_eq!(
        workflow["concurrency_keys"],
        serde_json::json!(["provider:x"])
    );
    let task = cli
        .json(&[
            "workflows",
            "trigger",
            "keyed",
            "--title",
            "t",
            "--priority",
            "-3",
        ])
        .await?;
    assert_eq!(task["priority"], -3);
    let keys = cli.json(&["keys", "list"]).await?;
    assert_eq!(keys[0]["workflows"], 1, "{keys}");
    let (code, stderr) = cli.code(&["keys", "delete", "provider:x"]).await?;
    assert_ne!(code, 0, "a key in use stays: {stderr}");
    assert!(stderr.contains("take it out"), "{stderr}");
    let (code, stderr) = cli
        .code(&["keys", "put", "provider:x", "--limit", "0"])
        .await?;
    assert_eq!(code, 2, "an invalid limit: {stderr}");
    Ok(())
}

#[tokio::test]
async fn schedule_policies_and_backfill_from_the_cli() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await?;
    let cli = Cli {
        manager: stack.manager.url(),
        scheduler: stack.scheduler.as_ref().expect("scheduler").url(),
        token: Some(TOKEN.into()),
    };
    stack
        .create_agent("cli-cron", am::RestartMode::OnFailure)
        .await?;
    let workflow = cli
        .json(&[
            "workflows",
            "create",
            "--name",
            "hourly",
            "--agent",
            "cli-cron",
            "--cron",
            "0 0 * * * *",
            "--catch-up",
            "all",
            "--catch-up-window",
            "6h",
            "--overlap",
            "skip",
            "--disabled",
        ])
        .await?;
    assert_eq!(
        workflow["trigger"],
        "cron 0 0 * * * *; catch-up all within 6h; overlap skip"
    );

    let three_hours_ago = humantime::format_rfc3339(
        std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 3600),
    )
    .to_string();
    let (code, stderr) = cli
        .code(&[
            "workflows",
            "backfill",
            "hourly",
            "--from",
            &three_hours_ago,
        ])
        .await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("3 ticks in the range: 3 tasks created"),
        "{stderr}"
    );
    let (code, stderr) = cli
        .code(&[
            "workflows",
            "backfill",
            "hourly",
            "--from",
            &three_hours_ago,
        ])
        .await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("0 tasks created, 3 had theirs"), "{stderr}");

    // A policy without a schedule is a usage error.
    let (code, stderr) = cli
        .code(&[
            "workflows",
            "create",
            "--name",
            "manual",
            "--agent",
            "cli-cron",
            "--overlap",
            "skip",
        ])
        .await?;
    assert_eq!(code, 2, "{stderr}");
    Ok(())
}

#[tokio::test]
async fn budgets_from_the_cli() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await?;
    let cli = Cli {
        manager: stack.manager.url(),
        scheduler: stack.scheduler.as_ref().expect("scheduler").url(),
        token: Some(TOKEN.into()),
    };
    let agent = stack
        .create_agent("cli-budget", am::RestartMode::OnFailure)
        .await?;
    let budget = cli
        .json(&[
            "budgets",
            "put",
            "--agent",
            "cli-budget",
            "--per",
            "week",
            "--max-cost",
            "5",
            "--max-tasks",
            "100",
        ])
        .await?;
    assert_eq!(budget["agent_id"], agent.id.as_str(), "{budget}");
    assert_eq!(budget["per"], "week", "{budget}");
    assert_eq!(budget["usage"]["cost"], 0.0, "{budget}");
    let listed = cli.json(&["budgets", "list"]).await?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    // `agents get` shows its budget with the usage.
    let shown = cli.json(&["agents", "get", "cli-budget"]).await?;
    assert_eq!(shown["budget"]["per"], "week", "{shown}");
    assert_eq!(shown["budget"]["max_cost"], 5.0, "{shown}");
    let (code, stderr) = cli
        .code(&[
            "budgets",
            "put",
            "--agent",
            "cli-budget",
            "--per",
            "fortnightly",
        ])
        .await?;
    assert_eq!(code, 2, "a period that is none: {stderr}");
    let (code, stderr) = cli
        .code(&["budgets", "put", "--agent", "cli-budget", "--per", "day"])
        .await?;
    assert_ne!(code, 0, "no cap: {stderr}");
    let (code, stderr) = cli
        .code(&["budgets", "delete", "--agent", "cli-budget"])
        .await?;
    assert_eq!(code, 0, "{stderr}");
    let listed = cli.json(&["budgets", "list"]).await?;
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    Ok(())
}
