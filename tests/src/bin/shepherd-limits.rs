//! Prints the README's limits table from the services' own lists
//! (`limits::all` in each); `--write` replaces the table in README.md.
//!
//!   cargo run -p shepherd-e2e --bin shepherd-limits -- --write

use anyhow::Context;
use shepherd_platform::limits::{README_BEGIN, README_END, markdown_rows};

fn table() -> String {
    let mut rows = vec![
        "| service | input | limit |".to_owned(),
        "|---|---|---|".to_owned(),
    ];
    rows.extend(markdown_rows(
        "agent-manager",
        &shepherd_agent_manager::limits::all(),
    ));
    rows.extend(markdown_rows(
        "scheduler",
        &shepherd_scheduler::limits::all(),
    ));
    rows.join("\n")
}

fn main() -> anyhow::Result<()> {
    let table = table();
    if std::env::args().nth(1).as_deref() != Some("--write") {
        println!("{table}");
        return Ok(());
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path)?;
    let start = readme
        .find(README_BEGIN)
        .context("no limits:begin marker in README.md")?;
    let end = readme
        .find(README_END)
        .context("no limits:end marker in README.md")?;
    let updated = format!(
        "{}{README_BEGIN}\n{table}\n{}",
        &readme[..start],
        &readme[end..]
    );
    std::fs::write(path, updated)?;
    Ok(())
}
