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

#[cfg(test)]
mod tests {
    use super::page_size;

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(page_size(0, 100, 1000).unwrap(), 100);
        assert_eq!(page_size(1000, 100, 1000).unwrap(), 1000);
        assert!(page_size(-1, 100, 1000).is_err());
        assert!(page_size(1001, 100, 1000).is_err());
    }
}
