//! `shepherd-agent approve`: asks for approval to use a tool from inside a
//! task the reference agent runs, and exits 0 when approved, 1 (or
//! `--deny-exit-code`) when not. A coding agent's pre-tool hook is one line:
//!
//! ```text
//! shepherd-agent approve --hook-json --deny-exit-code 2
//! ```
//!
//! The workflow's tool policy decides first, without asking anyone: a tool
//! on the denied list is denied, one outside a non-empty allowed list is
//! denied, one on the ask list is asked about, anything else is allowed.
//! Patterns may use `*`, and match the tool's name or `NAME(INPUT)` (so
//! `Bash(git push*)` asks before a push).

use clap::Parser;
use shepherd_agent_sdk::approval_socket::{self, AskLine};
use shepherd_proto::task_env;
use tokio::io::AsyncReadExt;

/// Exit code when the question could not be asked (not inside a task, the
/// agent gone): never a yes.
const CANNOT_ASK: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "shepherd-agent approve",
    about = "Ask for approval to use a tool, from inside a task run by shepherd-agent. \
             Exits 0 when approved, 1 (or --deny-exit-code) when denied, expired or withdrawn, \
             2 when it cannot ask."
)]
struct ApproveArgs {
    /// The tool (as the workflow's tool policy names it).
    #[arg(long, required_unless_present = "hook_json")]
    tool: Option<String>,
    /// What the tool is about to do, summarised for the person deciding
    /// ("-": read it from stdin).
    #[arg(long, default_value = "")]
    input: String,
    /// Why the agent wants it.
    #[arg(long, default_value = "")]
    reason: String,
    /// Read a pre-tool hook's JSON from stdin (`tool_name`, `tool_input`),
    /// as coding agents send it.
    #[arg(long, conflicts_with_all = ["tool", "input"])]
    hook_json: bool,
    /// Exit code for a denial (Claude Code blocks a tool on 2).
    #[arg(long, default_value_t = 1)]
    deny_exit_code: u8,
    /// Deny when no decision came within this long (e.g. `55m`). A hook
    /// runner that gives up on a slow hook may let the tool run: set this
    /// below the hook's own timeout so the answer is always a denial.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,
}

/// What the policy says before anyone is asked.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Ask,
    Allow(String),
    Deny(String),
}

pub(crate) async fn main() -> i32 {
    // Fail closed: a crash is "cannot ask", never a yes. (Clap's own usage
    // errors exit 2 as well.)
    std::panic::set_hook(Box::new(|info| {
        eprintln!("shepherd-agent approve: crashed ({info}): not approved");
        std::process::exit(CANNOT_ASK);
    }));
    let args = ApproveArgs::parse_from(std::env::args().skip(1));
    let deny = i32::from(args.deny_exit_code);
    let (tool, input) = match read_question(&args).await {
        Ok(question) => question,
        Err(err) => {
            eprintln!("shepherd-agent approve: {err}");
            return CANNOT_ASK;
        }
    };
    match policy(&tool, &input, &|name| std::env::var(name).ok()) {
        Verdict::Allow(why) => {
            println!("approved: {why}");
            return 0;
        }
        Verdict::Deny(why) => {
            eprintln!("denied: {why}");
            return deny;
        }
        Verdict::Ask => {}
    }
    let (Ok(socket), Ok(token)) = (
        std::env::var(task_env::APPROVAL_SOCKET),
        std::env::var(task_env::APPROVAL_TOKEN),
    ) else {
        eprintln!(
            "shepherd-agent approve: {} / {} are not set: run it from a task of shepherd-agent",
            task_env::APPROVAL_SOCKET,
            task_env::APPROVAL_TOKEN
        );
        return CANNOT_ASK;
    };
    let request = AskLine {
        token,
        tool: tool.clone(),
        input,
        reason: args.reason,
    };
    eprintln!("shepherd-agent approve: waiting for a decision on {tool}");
    let asked = approval_socket::ask(socket.as_ref(), &request);
    let answered = match args.timeout {
        Some(limit) => match tokio::time::timeout(limit, asked).await {
            Ok(answered) => answered,
            Err(_) => {
                eprintln!(
                    "denied: no decision within {}",
                    humantime::format_duration(limit)
                );
                return deny;
            }
        },
        None => asked.await,
    };
    match answered {
        Ok(answer) if answer.cannot_ask => {
            eprintln!("shepherd-agent approve: {}", answer.comment);
            CANNOT_ASK
        }
        Ok(answer) if answer.approved => {
            println!("approved by {}: {}", answer.decided_by, answer.comment);
            0
        }
        Ok(answer) => {
            let by = if answer.decided_by.is_empty() {
                String::new()
            } else {
                format!(" by {}", answer.decided_by)
            };
            eprintln!("{}{by}: {}", answer.state, answer.comment);
            deny
        }
        Err(err) => {
            eprintln!("shepherd-agent approve: could not ask the agent: {err}");
            CANNOT_ASK
        }
    }
}

/// The tool and its input, from the flags or a hook's JSON on stdin.
async fn read_question(args: &ApproveArgs) -> anyhow::Result<(String, String)> {
    let read_stdin = || async {
        let mut text = String::new();
        tokio::io::stdin().read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    if args.hook_json {
        let hook: serde_json::Value = serde_json::from_str(&read_stdin().await?)
            .map_err(|err| anyhow::anyhow!("--hook-json: stdin is not JSON: {err}"))?;
        let tool = hook
            .get("tool_name")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| anyhow::anyhow!("--hook-json: no \"tool_name\" in the JSON"))?;
        let input = match hook.get("tool_input") {
            // A shell tool's command is what a person wants to read.
            Some(value) => match value.get("command").and_then(serde_json::Value::as_str) {
                Some(command) => command.to_owned(),
                None => value.to_string(),
            },
            None => String::new(),
        };
        return Ok((tool.to_owned(), input));
    }
    let tool = args.tool.clone().unwrap_or_default();
    let input = if args.input == "-" {
        read_stdin().await?
    } else {
        args.input.clone()
    };
    Ok((tool, input))
}

/// Judges `tool` by the task's tool policy (`env` reads the variables). A
/// task without an ask list in its environment (dispatched without a spec)
/// always asks.
fn policy(tool: &str, input: &str, env: &dyn Fn(&str) -> Option<String>) -> Verdict {
    let list = |name: &str| -> Vec<String> {
        env(name)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let call = format!("{tool}({input})");
    let matches = |patterns: &[String]| patterns.iter().any(|p| glob(p, tool) || glob(p, &call));
    if matches(&list(task_env::DENIED_TOOLS)) {
        return Verdict::Deny(format!("{tool} is on the workflow's denied list"));
    }
    if env(task_env::ASK_TOOLS).is_none() || matches(&list(task_env::ASK_TOOLS)) {
        return Verdict::Ask;
    }
    let allowed = list(task_env::ALLOWED_TOOLS);
    if !allowed.is_empty() && !matches(&allowed) {
        return Verdict::Deny(format!("{tool} is not on the workflow's allowed list"));
    }
    Verdict::Allow(format!("{tool} is not on the workflow's ask list"))
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn globs() {
        assert!(glob("deploy", "deploy"));
        assert!(!glob("deploy", "deploys"));
        assert!(glob("Bash(git push*)", "Bash(git push origin main)"));
        assert!(!glob("Bash(git push*)", "Bash(git status)"));
        assert!(glob("*", "anything"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXbY"));
        assert!(!glob("ab*b", "ab"));
    }

    #[test]
    fn the_policy_decides_before_anyone_is_asked() {
        let policy_env = env(&[
            (task_env::DENIED_TOOLS, "rm"),
            (task_env::ASK_TOOLS, "deploy,Bash(git push*)"),
            (task_env::ALLOWED_TOOLS, "Bash,deploy,read"),
        ]);
        assert!(matches!(policy("rm", "", &policy_env), Verdict::Deny(_)));
        assert_eq!(policy("deploy", "prod", &policy_env), Verdict::Ask);
        assert_eq!(policy("Bash", "git push origin", &policy_env), Verdict::Ask);
        assert!(matches!(
            policy("Bash", "ls", &policy_env),
            Verdict::Allow(_)
        ));
        assert!(matches!(policy("write", "", &policy_env), Verdict::Deny(_)));
        // No policy in the environment (a task without a spec): ask.
        assert_eq!(policy("anything", "", &env(&[])), Verdict::Ask);
    }
}
