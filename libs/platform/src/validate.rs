//! Input rules both APIs share.

use crate::error::Error;

/// Longest resource name (agents, workflows).
pub const MAX_NAME: usize = 63;

/// Resource names: 1-63 characters of `[a-z0-9-]`, starting with a letter.
pub fn name(field: &str, name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
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
                "{} is not a valid name: use 1-{MAX_NAME} characters of a-z, 0-9 and '-', starting with a letter",
                quote(name)
            ),
        ))
    }
}

/// A resource id a client gives (a UUID); `what` names the kind of
/// resource in the error ("agent", "workflow").
pub fn id(field: &str, text: &str, what: &str) -> Result<uuid::Uuid, Error> {
    if text.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    uuid::Uuid::parse_str(text).map_err(|_| {
        Error::invalid(
            field,
            format!("{} is not a valid {what} id (a UUID)", quote(text)),
        )
    })
}

/// Free text a client sends: at most `max` bytes, and no NUL (PostgreSQL
/// cannot store it). The error names the field and the rule, never the
/// value.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max || value.contains('\0') {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} bytes, without NUL characters"),
        ));
    }
    Ok(())
}

/// Latest time a client may name: the end of year 9999 (PostgreSQL and
/// every clock here can hold it; beyond it conversions overflow).
pub const MAX_TIME_SECONDS: i64 = 253_402_300_799;

/// A time a client sends: between 1970 and 9999, nanos within a second.
pub fn time(
    field: &str,
    timestamp: prost_types::Timestamp,
) -> Result<std::time::SystemTime, Error> {
    let in_range = (0..=MAX_TIME_SECONDS).contains(&timestamp.seconds)
        && (0..1_000_000_000).contains(&timestamp.nanos);
    let time = in_range
        .then(|| std::time::SystemTime::try_from(timestamp).ok())
        .flatten();
    time.ok_or_else(|| Error::invalid(field, "must be a time between 1970 and 9999"))
}

/// A duration a client sends, if it is not negative. Checked before
/// converting: prost's conversion negates a negative duration's seconds to
/// report it, which overflows (and panics in a debug build) for i64::MIN.
pub fn non_negative_duration(value: prost_types::Duration) -> Option<std::time::Duration> {
    if value.seconds < 0 || value.nanos < 0 {
        return None;
    }
    std::time::Duration::try_from(value).ok()
}

/// A short, quoted prefix of a client's value for an error message (an
/// error never echoes a whole input: it could be megabytes).
pub fn quote(value: &str) -> String {
    const PREFIX: usize = 40;
    if value.len() <= PREFIX {
        return format!("{value:?}");
    }
    let mut end = PREFIX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &value[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_negative_duration_is_refused_without_overflowing() {
        let duration = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(super::non_negative_duration(duration(i64::MIN, 0)), None);
        assert_eq!(super::non_negative_duration(duration(0, -1)), None);
        assert_eq!(
            super::non_negative_duration(duration(2, 5)),
            Some(std::time::Duration::new(2, 5))
        );
    }

    #[test]
    fn text_is_bounded_and_nul_free_and_quotes_are_short() {
        assert!(super::text("f", "ok", 10).is_ok());
        assert!(super::text("f", "a\0b", 10).is_err());
        assert!(super::text("f", &"x".repeat(11), 10).is_err());
        let err = super::text("f", &"x".repeat(1 << 20), 10).unwrap_err();
        assert!(err.to_string().len() < 100, "{err}");
        let quoted = super::quote(&"é".repeat(1000));
        assert!(quoted.len() < 60 && quoted.ends_with('…'), "{quoted}");
        assert_eq!(super::quote("short"), "\"short\"");
    }

    #[test]
    fn times_are_bounded() {
        let at = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert!(super::time("t", at(0, 0)).is_ok());
        assert!(super::time("t", at(super::MAX_TIME_SECONDS, 999_999_999)).is_ok());
        for (seconds, nanos) in [
            (-1, 0),
            (i64::MAX, 0),
            (super::MAX_TIME_SECONDS + 1, 0),
            (0, -1),
            (0, 1_000_000_000),
        ] {
            assert!(
                super::time("t", at(seconds, nanos)).is_err(),
                "{seconds} {nanos}"
            );
        }
    }

    #[test]
    fn names() {
        assert!(super::name("name", "agent-1").is_ok());
        for bad in ["", "1abc", "Agent", "a_b", &"a".repeat(64)] {
            assert!(super::name("name", bad).is_err(), "{bad:?} accepted");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    proptest! {
        /// `text` accepts exactly the values within the bound and without
        /// NUL, and its error never carries the value.
        #[test]
        fn text_accepts_exactly_what_its_rule_says(value in ".{0,300}", max in 0usize..200) {
            let ok = value.len() <= max && !value.contains('\0');
            let result = super::text("field", &value, max);
            prop_assert_eq!(result.is_ok(), ok);
            if let Err(err) = result {
                let message = err.to_string();
                prop_assert!(message.len() < 200, "{}", message);
                if value.len() > 40 {
                    prop_assert!(!message.contains(&value));
                }
            }
        }

        /// Quoting any value (any length, any unicode) stays short and
        /// never splits a character.
        #[test]
        fn quotes_stay_short(value in any::<String>(), long in proptest::collection::vec(any::<char>(), 0..2000)) {
            let long: String = long.into_iter().collect();
            for value in [value, long] {
                let quoted = super::quote(&value);
                // 40 bytes of prefix, escaped (at most 10 bytes per char), quotes, ellipsis.
                prop_assert!(quoted.len() <= 40 * 10 + 8, "{} bytes", quoted.len());
            }
        }

        /// `name` accepts exactly the names of its rule.
        #[test]
        fn names_follow_their_rule(name in "[a-z0-9A-Z_ -]{0,70}") {
            let rule = !name.is_empty()
                && name.len() <= super::MAX_NAME
                && name.starts_with(|c: char| c.is_ascii_lowercase())
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            prop_assert_eq!(super::name("name", &name).is_ok(), rule);
        }
    }
}
