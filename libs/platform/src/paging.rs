//! `List*` pagination conventions shared by both APIs.

use crate::error::Error;

/// Validates a request's `page_size`: 0 means `default`, 1..=`max` is
/// taken as is, anything else is INVALID_ARGUMENT saying what is allowed.
pub fn page_size(value: i32, default: i64, max: i64) -> Result<i64, Error> {
    match i64::from(value) {
        0 => Ok(default),
        size if (1..=max).contains(&size) => Ok(size),
        size => Err(Error::invalid(
            "page_size",
            format!("{size} is out of range; use 1-{max}, or 0 for the default ({default})"),
        )),
    }
}

/// A request's `page_token`: None for the first page, else the position
/// it names (what a previous `next_token` gave). `rpc` names the call for
/// the error.
pub fn after<T: std::str::FromStr>(token: &str, rpc: &str) -> Result<Option<T>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    token.parse().map(Some).map_err(|_| {
        Error::invalid(
            "page_token",
            format!("is not a token returned by {rpc}; omit it to start from the first page"),
        )
    })
}

/// The `next_page_token` of a page: the position of its last item when the
/// page is full (there may be more), empty when it is the last page.
pub fn next_token<T, P: ToString>(page: &[T], limit: i64, position: impl Fn(&T) -> P) -> String {
    match page.last() {
        Some(last) if page.len() as i64 == limit => position(last).to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::{after, next_token, page_size};

    #[test]
    fn tokens_round_trip_and_end_on_a_short_page() {
        assert_eq!(after::<i64>("", "ListTasks").unwrap(), None);
        assert_eq!(after::<i64>("42", "ListTasks").unwrap(), Some(42));
        assert!(after::<i64>("x", "ListTasks").is_err());
        assert_eq!(next_token(&[1, 2, 3], 3, |n| *n), "3");
        assert_eq!(next_token(&[1, 2], 3, |n| *n), "");
        assert_eq!(next_token::<i32, i32>(&[], 3, |n| *n), "");
    }

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(page_size(0, 100, 1000).unwrap(), 100);
        assert_eq!(page_size(1000, 100, 1000).unwrap(), 1000);
        assert!(page_size(-1, 100, 1000).is_err());
        assert!(page_size(1001, 100, 1000).is_err());
    }
}
