//! `shepherd mcp` through an outside MCP client (PyPI's `mcp`, the
//! official Python SDK, in `tests/clients/mcp_client.py`) over stdio,
//! against real services: tools with schemas and read-only/destructive
//! annotations, reads that work, a helpful error for an unknown agent,
//! writes refused (and unlisted) without --allow-writes and done with it.
//! The same client also talks to `shepherd mcp --http` over streamable
//! HTTP, which refuses requests without the token. Where the Python SDK is
//! missing the tests skip and say why (the test command installs it).

use shepherd_e2e::{Stack, StackOptions};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_testkit::bin_path;

async fn run_client(
    stack: &Stack,
    allow_writes: bool,
    agent: &str,
    workflow: &str,
) -> anyhow::Result<serde_json::Value> {
    run_client_on(stack, allow_writes, agent, workflow, &[]).await
}

/// `http`: the URL of a running `shepherd mcp --http` and its token.
async fn run_client_on(
    stack: &Stack,
    allow_writes: bool,
    agent: &str,
    workflow: &str,
    http: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/mcp_client.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(bin_path("shepherd")?)
        .arg(if allow_writes { "1" } else { "0" })
        .args([agent, workflow])
        .args(http)
        .env(
            "SHEPHERD_AGENT_MANAGER_URL",
            stack.options.url(&stack.manager),
        )
        .env("SHEPHERD_SCHEDULER_URL", stack.scheduler_url())
        .env_remove("SHEPHERD_TOKEN")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(shepherd_e2e::WAIT, output).await??;
    anyhow::ensure!(
        output.status.success(),
        "the MCP client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Whether the Python MCP SDK is here (an error if it must be).
fn python_sdk() -> anyhow::Result<bool> {
    let has_sdk = std::process::Command::new("python3")
        .args(["-c", "import mcp"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !has_sdk {
        anyhow::ensure!(
            std::env::var_os("SHEPHERD_REQUIRE_MCP").is_none(),
            "SHEPHERD_REQUIRE_MCP is set but the Python MCP SDK is missing"
        );
        eprintln!("skipping the MCP test: no Python MCP SDK (pip install mcp)");
    }
    Ok(has_sdk)
}

#[tokio::test]
async fn streamable_http_serves_the_same_tools_to_token_holders_only() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    if !python_sdk()? {
        return Ok(());
    }
    const TOKEN: &str = "mcp-http-token";
    let mut stack = Stack::start(StackOptions {
        token: Some(TOKEN.into()),
        ..StackOptions::default()
    })
    .await?;
    let agent = stack
        .create_agent("over-http", am::RestartMode::OnFailure)
        .await?;
    let workflow = stack
        .create_workflow("http-assisted", &agent.id, false, "echo hi")
        .await?;
    let mut server = tokio::process::Command::new(bin_path("shepherd")?)
        .args(["mcp", "--http", "127.0.0.1:0"])
        .env(
            "SHEPHERD_AGENT_MANAGER_URL",
            stack.options.url(&stack.manager),
        )
        .env("SHEPHERD_SCHEDULER_URL", stack.scheduler_url())
        .env("SHEPHERD_TOKEN", TOKEN)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = server.stderr.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let url = tokio::time::timeout(shepherd_e2e::WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix("shepherd mcp listening on ") {
                return anyhow::Ok(url.to_owned());
            }
        }
        anyhow::bail!("shepherd mcp --http exited before listening")
    })
    .await??;

    let seen = run_client_on(&stack, false, "over-http", "http-assisted", &[&url, TOKEN]).await?;
    assert_eq!(
        seen["tools"]["explain_workflow"]["read_only"], true,
        "{seen}"
    );
    assert!(seen["tools"].get("restart_agent").is_none());
    let explain: serde_json::Value =
        serde_json::from_str(seen["explain"]["text"].as_str().unwrap_or("{}"))?;
    assert_eq!(explain["verdict"], "disabled", "{explain}");
    assert_eq!(explain["workflow_id"], workflow.id);
    assert_eq!(seen["restart"]["error"], true);

    // Without the token: refused before MCP sees the request.
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let answer = shepherd_e2e::http::request(
        "POST",
        &url,
        &[("Accept", "application/json, text/event-stream".into())],
        Some(body),
    )
    .await?;
    assert_eq!(answer.status, 401, "{}", answer.body);
    // With the token but from a page of another origin (a browser tab the
    // user opened): refused, whatever the page sends.
    let initialize = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"page","version":"1"}}}"#;
    let from_page = |origin: &'static str| {
        let url = url.clone();
        async move {
            shepherd_e2e::http::request(
                "POST",
                &url,
                &[
                    ("Accept", "application/json, text/event-stream".into()),
                    ("Authorization", format!("Bearer {TOKEN}")),
                    ("Origin", origin.into()),
                ],
                Some(initialize),
            )
            .await
        }
    };
    let foreign = from_page("http://evil.example").await?;
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    let local = from_page("http://127.0.0.1:3000").await?;
    assert_eq!(local.status, 200, "{}", local.body);
    server.kill().await?;
    Ok(())
}

/// `shepherd mcp --http` off loopback without a token would hand this
/// CLI's credentials to whoever reaches the port: it refuses to start.
#[tokio::test]
async fn mcp_over_http_refuses_a_public_address_without_a_token() -> anyhow::Result<()> {
    let output = tokio::process::Command::new(bin_path("shepherd")?)
        .args(["mcp", "--http", "0.0.0.0:0"])
        .env_remove("SHEPHERD_TOKEN")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(shepherd_e2e::WAIT, output).await??;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("without authentication") && stderr.contains("--token"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn an_outside_mcp_client_reads_the_fleet_and_writes_only_when_allowed() -> anyhow::Result<()>
{
    if !python_sdk()? {
        return Ok(());
    }
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("assistant-visible", am::RestartMode::OnFailure)
        .await?;
    let workflow = stack
        .create_workflow("assisted", &agent.id, false, "echo {{title}}")
        .await?;

    // Read-only: the reading tools, no writing ones, and writes refused.
    let seen = run_client(&stack, false, "assistant-visible", "assisted").await?;
    let tools = &seen["tools"];
    assert_eq!(tools["list_agents"]["read_only"], true, "{tools}");
    assert_eq!(
        tools["explain_workflow"]["required"],
        serde_json::json!(["workflow"])
    );
    assert!(
        tools.get("restart_agent").is_none(),
        "writes listed: {tools}"
    );
    assert!(tools.get("cancel_task").is_none());
    assert!(tools.get("decide_approval").is_none(), "{tools}");
    assert_eq!(tools["list_approvals"]["read_only"], true, "{tools}");
    assert_eq!(tools["list_concurrency_keys"]["read_only"], true, "{tools}");
    assert_eq!(tools["list_budgets"]["read_only"], true, "{tools}");
    assert_eq!(seen["approvals"]["error"], false, "{}", seen["approvals"]);
    assert_eq!(seen["approvals"]["text"], "[]");
    assert_eq!(seen["list_agents"]["error"], false);
    assert!(
        seen["list_agents"]["text"]
            .as_str()
            .is_some_and(|text| text.contains("assistant-visible"))
    );
    let explain: serde_json::Value =
        serde_json::from_str(seen["explain"]["text"].as_str().unwrap_or("{}"))?;
    assert_eq!(explain["verdict"], "disabled", "{explain}");
    assert_eq!(seen["missing"]["error"], true);
    assert!(
        seen["missing"]["text"]
            .as_str()
            .is_some_and(|text| text.contains("no-such-agent"))
    );
    assert_eq!(seen["restart"]["error"], true);
    assert!(
        seen["restart"]["text"]
            .as_str()
            .is_some_and(|text| text.contains("--allow-writes"))
    );
    assert_eq!(
        stack.agent(&agent.id).await?.generation,
        1,
        "nothing restarted"
    );

    // With --allow-writes: listed, annotated destructive, and done.
    let seen = run_client(&stack, true, "assistant-visible", &workflow.id).await?;
    assert_eq!(seen["tools"]["restart_agent"]["destructive"], true);
    assert_eq!(seen["tools"]["restart_agent"]["read_only"], false);
    assert_eq!(
        seen["tools"]["decide_approval"]["required"],
        serde_json::json!(["approval", "decision"])
    );
    assert_eq!(seen["restart"]["error"], false, "{}", seen["restart"]);
    stack.wait_agent_ready(&agent.id, 2).await?;
    assert_eq!(stack.agent(&agent.id).await?.generation, 2);
    Ok(())
}
