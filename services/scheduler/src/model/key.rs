//! Concurrency keys: a scarce thing workflows share, and how many of their
//! tasks may hold it at once (see `key_shares` for who gets a slot).

use std::time::Duration;

use crate::error::Error;

/// Longest key name.
pub const MAX_KEY_NAME: usize = 100;
/// Largest limit of a key.
pub const MAX_KEY_LIMIT: u32 = 100_000;
/// Most keys one workflow names.
pub const MAX_WORKFLOW_KEYS: usize = 8;

/// Largest number of starts a rate allows per period.
pub const MAX_RATE: u32 = 100_000;
/// Shortest and longest rate period.
pub const MIN_RATE_PERIOD: Duration = Duration::from_secs(1);
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// A key as defined (`PutConcurrencyKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyKey {
    pub name: String,
    /// Tasks holding it that may run at once.
    pub max_running: u32,
    /// Tasks holding it that may start per period, if capped.
    pub rate: Option<Rate>,
}

/// At most `starts` starts per `period` (a token bucket of `starts`
/// tokens, refilled evenly over the period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub starts: u32,
    pub period: Duration,
}

impl Rate {
    /// A rate, checked: 1 to `MAX_RATE` starts per 1s to 1 day.
    pub fn new(starts: u32, period: Duration) -> Result<Self, Error> {
        if !(1..=MAX_RATE).contains(&starts) {
            return Err(Error::invalid(
                "key.rate_limit",
                format!("{starts} is out of range (1-{MAX_RATE}; 0 with no period: no cap)"),
            ));
        }
        if !(MIN_RATE_PERIOD..=MAX_RATE_PERIOD).contains(&period) {
            return Err(Error::invalid(
                "key.rate_period",
                "must be 1s to 1 day (a period of zero caps nothing)",
            ));
        }
        Ok(Self { starts, period })
    }
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
    pub fn new(name: &str, max_running: u32, rate: Option<Rate>) -> Result<Self, Error> {
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
            rate,
        })
    }
}

/// A key's name: 1-`MAX_KEY_NAME` characters of a-z, 0-9 and `-_.:/`,
/// starting with a letter or digit (e.g. `provider:anthropic`, `repo:web`).
pub fn check_key_name(name: &str, field: &'static str) -> Result<(), Error> {
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
        assert!(ConcurrencyKey::new("provider:anthropic", 5, None).is_ok());
        assert!(ConcurrencyKey::new("repo:web", 1, None).is_ok());
        for bad in [
            "",
            "Upper",
            ":leading",
            "sp ace",
            &"a".repeat(MAX_KEY_NAME + 1),
        ] {
            assert!(ConcurrencyKey::new(bad, 1, None).is_err(), "{bad:?}");
        }
        assert!(ConcurrencyKey::new("k", 0, None).is_err());
        assert!(ConcurrencyKey::new("k", MAX_KEY_LIMIT + 1, None).is_err());
        let minute = Duration::from_secs(60);
        assert!(Rate::new(60, minute).is_ok());
        assert!(Rate::new(0, minute).is_err());
        assert!(Rate::new(MAX_RATE + 1, minute).is_err());
        assert!(Rate::new(1, Duration::ZERO).is_err(), "a period of zero");
        assert!(Rate::new(1, MAX_RATE_PERIOD * 2).is_err());
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
