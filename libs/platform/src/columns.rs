//! Conversions between domain values and PostgreSQL columns, shared by both
//! services' stores.
//!
//! Counters are unsigned in the API and signed in PostgreSQL (`integer`,
//! `bigint`); real values stay far from the limits, and the conversions
//! saturate rather than wrap.

use crate::error::Error;

pub fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, Error> {
    serde_json::to_value(value).map_err(|err| Error::Internal(format!("encoding JSON: {err}")))
}

pub fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Error> {
    serde_json::from_value(value).map_err(|err| Error::Internal(format!("decoding JSON: {err}")))
}

pub fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub fn from_i64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub fn to_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

pub fn from_i32(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// A duration stored as integer milliseconds (`bigint`).
pub fn to_millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

pub fn from_millis(millis: i64) -> std::time::Duration {
    std::time::Duration::from_millis(from_i64(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate() {
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert_eq!(from_i64(-1), 0);
        assert_eq!(to_i32(u32::MAX), i32::MAX);
        assert_eq!(from_i32(-5), 0);
        let second = std::time::Duration::from_secs(1);
        assert_eq!(from_millis(to_millis(second)), second);
        assert_eq!(from_millis(-1), std::time::Duration::ZERO);
        let value: Vec<u32> = from_json(to_json(&vec![1u32, 2]).unwrap()).unwrap();
        assert_eq!(value, [1, 2]);
        assert!(from_json::<u32>(serde_json::json!("x")).is_err());
    }
}
