//! Documented input bounds. Each service lists its limits from the very
//! constants its validators use; the README's limits table is generated
//! from these lists and a test keeps the two identical.

/// One bound on one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Which input (an RPC field, or a kind of value).
    pub input: &'static str,
    /// The rule, in words, with its numbers.
    pub bound: String,
}

impl Limit {
    pub fn new(input: &'static str, bound: impl Into<String>) -> Self {
        Self {
            input,
            bound: bound.into(),
        }
    }
}

/// The README table rows of `service`'s limits.
pub fn markdown_rows(service: &str, limits: &[Limit]) -> Vec<String> {
    limits
        .iter()
        .map(|limit| format!("| {service} | {} | {} |", limit.input, limit.bound))
        .collect()
}

/// Marks the README's limits table: the rows between them are generated.
pub const README_BEGIN: &str = "<!-- limits:begin -->";
pub const README_END: &str = "<!-- limits:end -->";

/// The rows of the README's limits table (between the markers).
pub fn readme_rows(readme: &str) -> Vec<String> {
    let Some(start) = readme.find(README_BEGIN) else {
        return Vec::new();
    };
    let section = &readme[start + README_BEGIN.len()..];
    let section = &section[..section.find(README_END).unwrap_or(section.len())];
    section
        .lines()
        .filter(|line| {
            line.starts_with("| ") && !line.starts_with("| service") && !line.starts_with("|---")
        })
        .map(str::to_owned)
        .collect()
}

/// Fails (for a service's test) unless the README's limits table lists
/// exactly `service`'s `limits`, in order.
pub fn assert_readme_lists(readme: &str, service: &str, limits: &[Limit]) {
    let prefix = format!("| {service} |");
    let listed: Vec<String> = readme_rows(readme)
        .into_iter()
        .filter(|row| row.starts_with(&prefix))
        .collect();
    assert_eq!(
        listed,
        markdown_rows(service, limits),
        "regenerate the README's limits rows: cargo run -p shepherd-e2e --bin shepherd-limits -- --write"
    );
}

/// Size of a human byte count: `64 KiB`, `1 MiB`, `200 B`.
pub fn bytes(n: usize) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{} MiB", n / (1024 * 1024))
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

/// A human duration in its largest exact unit: `10ms`, `1s`, `30 days`,
/// `100 years` (of 365 days).
pub fn duration(d: std::time::Duration) -> String {
    const DAY: u64 = 24 * 3600;
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if secs.is_multiple_of(365 * DAY) {
        plural(secs / (365 * DAY), "year")
    } else if secs.is_multiple_of(DAY) {
        plural(secs / DAY, "day")
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}min", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(duration(Duration::from_millis(10)), "10ms");
        assert_eq!(duration(Duration::from_secs(1)), "1s");
        assert_eq!(duration(Duration::from_secs(7 * 24 * 3600)), "7 days");
        assert_eq!(duration(Duration::from_secs(24 * 3600)), "1 day");
        assert_eq!(
            duration(Duration::from_secs(100 * 365 * 24 * 3600)),
            "100 years"
        );
        assert_eq!(bytes(64 * 1024), "64 KiB");
        assert_eq!(bytes(1024 * 1024), "1 MiB");
        assert_eq!(bytes(200), "200 B");
        let readme = format!(
            "x\n{README_BEGIN}\n| service | input | limit |\n|---|---|---|\n| a | b | c |\n{README_END}\n| d | e | f |"
        );
        assert_eq!(readme_rows(&readme), ["| a | b | c |"]);
    }
}
