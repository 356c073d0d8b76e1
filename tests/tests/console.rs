//! The web console end to end: real services and PostgreSQL, the console
//! binary, and a real headless browser (Debian's chromium driven through
//! chromedriver over WebDriver). Where no browser is installed the browser
//! test skips and says why (the test command installs one; with
//! SHEPHERD_REQUIRE_BROWSER=1 a missing browser fails instead).

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use shepherd_e2e::http::request;
use shepherd_e2e::{Stack, StackOptions, test_restart_policy};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1 as sched;
use shepherd_testkit::{ServiceProcess, bin_path, eventually};
use tokio::process::{Child, Command};

const XSS: &str = "<script>alert(1)</script>";
/// How long the page has to show a change (pushed live).
const LIVE: Duration = Duration::from_secs(30);

async fn start_console(stack: &Stack, token: Option<&str>) -> anyhow::Result<ServiceProcess> {
    let args = ["--listen", "127.0.0.1:0"].map(str::to_owned);
    let mut env = vec![
        ("AGENT_MANAGER_URL", stack.options.url(&stack.manager)),
        ("SCHEDULER_URL", stack.scheduler_url()),
    ];
    if let Some(token) = token {
        env.push(("SHEPHERD_TOKEN", token.to_owned()));
    }
    ServiceProcess::start("shepherd-console", &args, &env).await
}

/// chromedriver, killed with everything it started (the browser and its
/// helpers, which inherit its marker variable) when the test ends.
struct Driver {
    _child: Child,
    port: u16,
    /// `SHEPHERD_TEST_BROWSER=<random>`: in the environment of every
    /// process of this browser.
    marker: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        for pid in shepherd_testkit::processes_with_env(&[&self.marker]) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The browser, or why there is none.
fn browser_binaries() -> Result<(String, String), String> {
    let find = |names: &[&str]| {
        names
            .iter()
            .find_map(|name| shepherd_testkit::on_path(name))
            .map(|path| path.display().to_string())
    };
    let driver =
        find(&["chromedriver"]).ok_or("no chromedriver in PATH (Debian: chromium-driver)")?;
    let browser = find(&["chromium", "chromium-browser", "google-chrome"])
        .ok_or("no chromium in PATH (Debian: chromium)")?;
    Ok((driver, browser))
}

async fn browser() -> anyhow::Result<Option<(Driver, Client)>> {
    let (driver_bin, browser_bin) = match browser_binaries() {
        Ok(found) => found,
        Err(why) if std::env::var_os("SHEPHERD_REQUIRE_BROWSER").is_some() => {
            anyhow::bail!("SHEPHERD_REQUIRE_BROWSER is set but {why}")
        }
        Err(why) => {
            eprintln!("skipping the console's browser test: {why}");
            return Ok(None);
        }
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let marker = format!("SHEPHERD_TEST_BROWSER={}", uuid::Uuid::new_v4().simple());
    let (key, value) = marker.split_once('=').unwrap_or_default();
    let child = Command::new(driver_bin)
        .arg(format!("--port={port}"))
        .env(key, value)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let driver = Driver {
        _child: child,
        port,
        marker,
    };
    let url = format!("http://127.0.0.1:{}", driver.port);
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": browser_bin,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        }),
    );
    let client = eventually(
        Duration::from_secs(30),
        "chromedriver to accept a session",
        || {
            let capabilities = capabilities.clone();
            let url = url.clone();
            async move {
                // Plain HTTP over loopback: no TLS stack needed.
                Ok(ClientBuilder::new(HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&url)
                    .await
                    .ok())
            }
        },
    )
    .await?;
    Ok(Some((driver, client)))
}

async fn text_of(client: &Client, css: &str) -> anyhow::Result<String> {
    Ok(client.find(Locator::Css(css)).await?.text().await?)
}

/// Waits until the element `css` shows `expected` (pushed, no reload).
async fn wait_text(client: &Client, css: &str, expected: &str) -> anyhow::Result<()> {
    eventually(LIVE, &format!("{css} to show {expected:?}"), || async {
        Ok(text_of(client, css)
            .await
            .ok()
            .filter(|text| text == expected)
            .map(drop))
    })
    .await
}

#[tokio::test]
async fn the_console_shows_the_fleet_live_in_a_real_browser() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    // An agent whose log holds markup: the page must show it as text.
    let agent = stack
        .create_agent_with(am::Agent {
            name: "shown".into(),
            command: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                format!(
                    "echo '{XSS}'; exec {}",
                    bin_path("shepherd-agent")?.display()
                ),
            ],
            restart_policy: Some(test_restart_policy(am::RestartMode::OnFailure)),
            ..Default::default()
        })
        .await?;
    let workflow = stack
        .create_workflow("echoes", &agent.id, true, "echo {{title}}")
        .await?;
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Running, "")
        .await?;
    let console = start_console(&stack, None).await?;
    let Some((_driver, client)) = browser().await? else {
        return Ok(());
    };
    let base = format!("http://{}", console.addr);

    // The fleet page lists the agent; its page shows generation 1.
    client.goto(&base).await?;
    eventually(LIVE, "the fleet page to list the agent", || async {
        Ok(client.find(Locator::LinkText("shown")).await.ok())
    })
    .await?
    .click()
    .await?;
    wait_text(&client, "#generation", "1").await?;
    wait_text(&client, ".runner", "running").await?;
    // The log line with markup is text: no script ran, none was added.
    eventually(LIVE, "the log tail", || async {
        Ok(text_of(&client, "#logs")
            .await
            .ok()
            .filter(|logs| logs.contains(XSS))
            .map(drop))
    })
    .await?;
    assert!(client.get_alert_text().await.is_err(), "an alert is open");
    let scripts = client
        .execute(
            "return document.querySelectorAll('main script').length",
            vec![],
        )
        .await?;
    assert_eq!(scripts, json!(0));

    // Restart from the page: generation 2 and the runner back, live.
    client
        .execute("window.notReloaded = true; return true", vec![])
        .await?;
    client.find(Locator::Id("restart")).await?.click().await?;
    wait_text(&client, "#generation", "2").await?;
    wait_text(&client, ".runner", "running").await?;
    assert_eq!(
        client
            .execute("return window.notReloaded === true", vec![])
            .await?,
        json!(true),
        "the page was reloaded"
    );

    // Trigger from the workflow page; the task reaches SUCCEEDED live.
    client
        .find(Locator::LinkText("echoes"))
        .await?
        .click()
        .await?;
    let title = client
        .wait()
        .for_element(Locator::Id("trigger-title"))
        .await?;
    title.send_keys("from-the-browser").await?;
    client.find(Locator::Id("trigger")).await?.click().await?;
    eventually(LIVE, "the triggered task to show succeeded", || async {
        let state = client
            .execute(
                "const row = [...document.querySelectorAll('tr[data-task]')]
                   .find(r => r.querySelector('.title').textContent === 'from-the-browser');
                 return row ? row.querySelector('.state').textContent : null",
                vec![],
            )
            .await?;
        Ok((state == json!("succeeded")).then_some(()))
    })
    .await?;
    let tasks = stack.tasks(&workflow.id).await?;
    assert!(
        tasks.iter().any(|t| t
            .fields
            .as_ref()
            .is_some_and(|f| f.title == "from-the-browser")),
        "the scheduler has the task"
    );

    // The workflows page: the keys and budgets, with what they hold.
    stack
        .workflows
        .clone()
        .put_concurrency_key(sched::PutConcurrencyKeyRequest {
            key: Some(sched::ConcurrencyKey {
                name: "provider:shown".into(),
                max_running: 3,
                ..Default::default()
            }),
        })
        .await?;
    stack
        .workflows
        .clone()
        .put_budget(sched::PutBudgetRequest {
            budget: Some(sched::Budget {
                agent_id: agent.id.clone(),
                calendar: sched::CalendarPeriod::Week as i32,
                max_cost: 50.0,
                ..Default::default()
            }),
        })
        .await?;
    client.goto(&format!("{base}/#/workflows")).await?;
    wait_text(
        &client,
        "tr[data-key='provider:shown'] td:nth-child(2)",
        "0/3",
    )
    .await?;
    wait_text(&client, "#budgets tbody tr td:nth-child(3)", "cost 0/50").await?;

    // The audit page: the restart and the trigger, as the console made
    // them (its credential: the open API's anonymous caller).
    client.goto(&format!("{base}/#/audit")).await?;
    eventually(LIVE, "the audit log to show the restart and the trigger", || async {
        let calls = client
            .execute(
                "return [...document.querySelectorAll('tr.audit')].map(r => r.children[4].textContent)",
                vec![],
            )
            .await?;
        let calls: Vec<String> = serde_json::from_value(calls).unwrap_or_default();
        Ok((calls.contains(&"RestartAgent".to_owned())
            && calls.contains(&"TriggerWorkflow".to_owned()))
        .then_some(()))
    })
    .await?;
    client.close().await?;
    Ok(())
}

#[tokio::test]
async fn console_actions_need_a_session_and_its_csrf_token() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("guarded", am::RestartMode::OnFailure)
        .await?;
    let console = start_console(&stack, None).await?;
    let base = format!("http://{}", console.addr);
    let restart = format!("{base}/api/agents/{}/restart", agent.id);

    // No session: 401. A session without the CSRF token: 403.
    assert_eq!(
        request("POST", &restart, &[], Some(b"{}")).await?.status,
        401
    );
    let session = request("GET", &format!("{base}/api/session"), &[], None).await?;
    let set_cookie = session.header("set-cookie").unwrap_or_default().to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();
    let csrf = session.json()["csrf"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let refused = request("POST", &restart, &[("cookie", cookie.clone())], Some(b"{}")).await?;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let wrong = request(
        "POST",
        &restart,
        &[("cookie", cookie.clone()), ("x-csrf-token", "0".repeat(64))],
        Some(b"{}"),
    )
    .await?;
    assert_eq!(wrong.status, 403);
    assert_eq!(
        stack.agent(&agent.id).await?.generation,
        1,
        "nothing restarted"
    );
    // With it: done.
    let done = request(
        "POST",
        &restart,
        &[("cookie", cookie), ("x-csrf-token", csrf)],
        Some(b"{}"),
    )
    .await?;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json()["generation"], 2);
    // The page itself forbids inline scripts.
    let page = request("GET", &format!("{base}/"), &[], None).await?;
    assert!(
        page.header("content-security-policy")
            .is_some_and(|csp| csp.contains("script-src 'self'")),
        "CSP"
    );

    // With a token configured, the console asks for it first.
    let locked = start_console(&stack, Some("letmein")).await?;
    let base = format!("http://{}", locked.addr);
    let state = request("GET", &format!("{base}/api/session"), &[], None).await?;
    assert_eq!(state.json()["authenticated"], false);
    assert!(state.header("set-cookie").is_none());
    assert_eq!(
        request("GET", &format!("{base}/api/agents"), &[], None)
            .await?
            .status,
        401
    );
    let login = format!("{base}/api/login");
    let wrong = request("POST", &login, &[], Some(br#"{"token":"nope"}"#)).await?;
    assert_eq!(wrong.status, 401);
    let right = request("POST", &login, &[], Some(br#"{"token":"letmein"}"#)).await?;
    assert_eq!(right.status, 200);
    let cookie = right
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .to_owned();
    let agents = request(
        "GET",
        &format!("{base}/api/agents"),
        &[("cookie", cookie)],
        None,
    )
    .await?;
    assert_eq!(agents.status, 200);
    assert_eq!(agents.json()[0]["name"], "guarded");
    Ok(())
}

/// A page on another site gets nothing through the browser: a request
/// naming the console by a rebound foreign name is refused whatever it
/// carries, a POST from another origin changes nothing even with a valid
/// session and CSRF token, and guessing the sign-in token is throttled.
#[tokio::test]
async fn a_foreign_page_changes_nothing_through_the_console() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let agent = stack
        .create_agent("rebound", am::RestartMode::OnFailure)
        .await?;
    let console = start_console(&stack, None).await?;
    let base = format!("http://{}", console.addr);
    let restart = format!("{base}/api/agents/{}/restart", agent.id);
    let rebound = ("Host", format!("evil.example:{}", console.addr.port()));

    // Rebinding: the foreign name gets no session, no page, no action.
    let session = request(
        "GET",
        &format!("{base}/api/session"),
        std::slice::from_ref(&rebound),
        None,
    )
    .await?;
    assert_eq!(session.status, 421, "{}", session.body);
    assert!(session.header("set-cookie").is_none());
    assert_eq!(
        request(
            "GET",
            &format!("{base}/"),
            std::slice::from_ref(&rebound),
            None
        )
        .await?
        .status,
        421
    );

    // A real session, used by a foreign origin: refused.
    let session = request("GET", &format!("{base}/api/session"), &[], None).await?;
    let cookie = session
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .to_owned();
    let csrf = session.json()["csrf"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let signed = [("cookie", cookie), ("x-csrf-token", csrf)];
    for headers in [
        vec![
            signed[0].clone(),
            signed[1].clone(),
            ("Origin", "http://evil.example".to_owned()),
        ],
        vec![signed[0].clone(), signed[1].clone(), rebound.clone()],
    ] {
        let refused = request("POST", &restart, &headers, Some(b"{}")).await?;
        assert!(
            matches!(refused.status, 403 | 421),
            "{} {}",
            refused.status,
            refused.body
        );
    }
    assert_eq!(
        stack.agent(&agent.id).await?.generation,
        1,
        "nothing restarted"
    );
    // Its own origin: done.
    let own = vec![
        signed[0].clone(),
        signed[1].clone(),
        (
            "Origin",
            format!("http://127.0.0.1:{}", console.addr.port()),
        ),
    ];
    assert_eq!(
        request("POST", &restart, &own, Some(b"{}")).await?.status,
        200
    );

    // Guessing the token: after 5 wrong ones, even the right one waits.
    let locked = start_console(&stack, Some("letmein")).await?;
    let login = format!("http://{}/api/login", locked.addr);
    for _ in 0..5 {
        assert_eq!(
            request("POST", &login, &[], Some(br#"{"token":"guess"}"#))
                .await?
                .status,
            401
        );
    }
    let throttled = request("POST", &login, &[], Some(br#"{"token":"letmein"}"#)).await?;
    assert_eq!(throttled.status, 429, "{}", throttled.body);
    Ok(())
}
