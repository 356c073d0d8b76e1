//! Failpoints: named places in the code where a test can make the process
//! crash, deterministically, to prove that every persisted state has an
//! owner that settles it after a crash at that line.
//!
//! Off unless the `SHEPHERD_FAILPOINTS` environment variable names them:
//! `SHEPHERD_FAILPOINTS="scheduler.after_claim=abort,manager.before_report=abort"`.
//! Actions:
//! * `abort`: the process aborts (as a `kill -9` would stop it) the first
//!   time the point is reached;
//! * `skip`: `hit` returns true every time, and the caller skips the step
//!   after the point (e.g. a call that then never happens).
//!
//! The variable is read once; a point not named costs one hash lookup in a
//! map that is empty in production.

use std::collections::HashMap;
use std::sync::OnceLock;

/// What a named failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Skip,
}

fn configured() -> &'static HashMap<String, Action> {
    static POINTS: OnceLock<HashMap<String, Action>> = OnceLock::new();
    POINTS.get_or_init(|| parse(&std::env::var("SHEPHERD_FAILPOINTS").unwrap_or_default()))
}

fn parse(spec: &str) -> HashMap<String, Action> {
    spec.split(',')
        .filter_map(|item| {
            let (name, action) = item.trim().split_once('=')?;
            let action = match action.trim() {
                "abort" => Action::Abort,
                "skip" => Action::Skip,
                other => {
                    eprintln!("ignoring failpoint {name}: unknown action {other:?}");
                    return None;
                }
            };
            Some((name.trim().to_owned(), action))
        })
        .collect()
}

/// Reaches the failpoint `name`: aborts the process if it is set to
/// `abort`; returns true if it is set to `skip` (the caller then skips the
/// step the point guards), false when it is not set.
pub fn hit(name: &str) -> bool {
    match configured().get(name) {
        None => false,
        Some(Action::Skip) => true,
        Some(Action::Abort) => {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_actions_and_ignores_junk() {
        let points = parse(" a.b=abort, c=skip ,d=explode,nothing");
        assert_eq!(points.get("a.b"), Some(&Action::Abort));
        assert_eq!(points.get("c"), Some(&Action::Skip));
        assert_eq!(points.len(), 2);
        assert!(parse("").is_empty());
    }
}
