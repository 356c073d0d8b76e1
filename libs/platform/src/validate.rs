//! Input rules both APIs share.

use crate::error::Error;

/// Resource names: 1-63 characters of `[a-z0-9-]`, starting with a letter.
pub fn name(field: &str, name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{name:?} is not a valid name: use 1-63 characters of a-z, 0-9 and '-', starting with a letter"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert!(super::name("name", "agent-1").is_ok());
        for bad in ["", "1abc", "Agent", "a_b", &"a".repeat(64)] {
            assert!(super::name("name", bad).is_err(), "{bad:?} accepted");
        }
    }
}
