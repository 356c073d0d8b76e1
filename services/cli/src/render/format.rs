//! The two ways a resource prints: rows of an aligned table, or JSON.

use serde_json::Value;

use crate::cli::Output;

/// A resource that can be printed both ways.
pub(crate) trait Render {
    fn headers() -> &'static [&'static str];
    fn row(&self) -> Vec<String>;
    fn json(&self) -> Value;

    /// The key/value list `get` prints: the row, unless a resource has more
    /// to say about one item than fits a table.
    fn details(&self) -> Vec<(&'static str, String)> {
        Self::headers().iter().copied().zip(self.row()).collect()
    }
}

/// Prints one resource: a key/value list, or a JSON object.
pub(crate) fn one<T: Render>(output: Output, item: &T) {
    match output {
        Output::Json => println!("{}", item.json()),
        Output::Table => {
            for (header, value) in item.details() {
                println!("{:<14} {value}", format!("{header}:"));
            }
        }
    }
}

/// Prints one resource with its budget, if it has one: the budget as a
/// `budget` field of the JSON object, or as one more line.
pub(crate) fn one_with_budget<T: Render>(
    output: Output,
    item: &T,
    budget: Option<&shepherd_proto::scheduler::v1::Budget>,
) {
    match output {
        Output::Json => {
            let mut json = item.json();
            if let Value::Object(fields) = &mut json {
                fields.insert("budget".into(), budget.map_or(Value::Null, Render::json));
            }
            println!("{json}");
        }
        Output::Table => {
            one(output, item);
            if let Some(budget) = budget {
                let row = budget.row();
                // per, used, resets, spent (see `Render for Budget`).
                let spent = if row[5].is_empty() {
                    String::new()
                } else {
                    format!("; SPENT: {}", row[5])
                };
                println!("{:<14} per {}: {}{spent}", "budget:", row[2], row[3]);
            }
        }
    }
}

/// Prints a list: an aligned table, or a JSON array.
pub(crate) fn many<T: Render>(output: Output, items: &[T]) {
    match output {
        Output::Json => println!("{}", Value::Array(items.iter().map(Render::json).collect())),
        Output::Table => table(T::headers(), items.iter().map(Render::row).collect()),
    }
}

pub(super) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
}

pub(super) fn time(value: Option<&prost_types::Timestamp>) -> String {
    value
        .and_then(|t| std::time::SystemTime::try_from(*t).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

/// Text an agent sent, as a person should see it (control characters, ANSI
/// escapes and bidirectional overrides escaped).
pub(crate) fn shown(text: &str) -> String {
    shepherd_platform::text::visible(text).into_owned()
}
