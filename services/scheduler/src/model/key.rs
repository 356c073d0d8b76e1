//! Concurrency keys: a scarce thing workflows share, and how many of their
//! tasks may hold it at once (see `key_shares` for who gets a slot).

use crate::error::Error;

/// Longest key name.
pub const MAX_KEY_NAME: usize = 100;
/// Largest limit of a key.
pub const MAX_KEY_LIMIT: u32 = 100_000;
/// Most keys one workflow names.
pub const MAX_WORKFLOW_KEYS: usize = 8;

/// A key as defined (`PutConcurrencyKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyKey {
    pub name: String,
    /// Tasks holding it that may run at once.
    pub max_running: u32,
}

/// A key with what holds it now (`ListConcurrencyKeys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    pub key: ConcurrencyKey,
    /// Dispatched tasks holding it.
    pub running: u32,
    /// Workflows waiting for one of its slots.
    pub waiting: u32,
    /// Workflows naming it.
    pub workflows: u32,
}

impl ConcurrencyKey {
    /// A key, checked: its name (see `check_key_name`) and a limit of 1 to
    /// `MAX_KEY_LIMIT`.
    pub fn new(name: &str, max_running: u32) -> Result<Self, Error> {
        check_key_name(name, "key.name")?;
        if !(1..=MAX_KEY_LIMIT).contains(&max_running) {
            return Err(Error::invalid(
                "key.max_running",
                format!("{max_running} is out of range (1-{MAX_KEY_LIMIT})"),
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            max_running,
        })
    }
}

/// A key's name: 1-`MAX_KEY_NAME` characters of a-z, 0-9 and `-_.:/`,
/// starting with a letter or digit (e.g. `provider:anthropic`, `repo:web`).
fn check_key_name(name: &str, field: &'static str) -> Result<(), Error> {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.:/".contains(c);
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() > MAX_KEY_NAME || !starts_well || !name.chars().all(valid_char) {
        return Err(Error::invalid(
            field,
            format!(
                "a key name is 1-{MAX_KEY_NAME} characters of a-z, 0-9 and -_.:/, starting with a letter or digit"
            ),
        ));
    }
    Ok(())
}

/// A workflow's keys, checked: each a valid name, no repeats, at most
/// `MAX_WORKFLOW_KEYS`; sorted (the order a claim locks them in).
pub fn check_workflow_keys(keys: &[String]) -> Result<Vec<String>, Error> {
    if keys.len() > MAX_WORKFLOW_KEYS {
        return Err(Error::invalid(
            "workflow.concurrency_keys",
            format!("at most {MAX_WORKFLOW_KEYS} keys"),
        ));
    }
    let mut sorted = keys.to_vec();
    for key in &sorted {
        check_key_name(key, "workflow.concurrency_keys")?;
    }
    sorted.sort();
    if sorted.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(Error::invalid(
            "workflow.concurrency_keys",
            "a key is named twice",
        ));
    }
    Ok(sorted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_limits_are_checked() {
        assert!(ConcurrencyKey::new("provider:anthropic", 5).is_ok());
        assert!(ConcurrencyKey::new("repo:web", 1).is_ok());
        for bad in [
            "",
            "Upper",
            ":leading",
            "sp ace",
            &"a".repeat(MAX_KEY_NAME + 1),
        ] {
            assert!(ConcurrencyKey::new(bad, 1).is_err(), "{bad:?}");
        }
        assert!(ConcurrencyKey::new("k", 0).is_err());
        assert!(ConcurrencyKey::new("k", MAX_KEY_LIMIT + 1).is_err());
    }

    #[test]
    fn a_workflow_names_each_key_once_and_not_too_many() {
        let keys = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_workflow_keys(&keys(&["b", "a"])).expect("valid"),
            ["a", "b"]
        );
        assert!(check_workflow_keys(&keys(&["a", "a"])).is_err());
        let many: Vec<String> = (0..=MAX_WORKFLOW_KEYS).map(|i| format!("k{i}")).collect();
        assert!(check_workflow_keys(&many).is_err());
    }
}
