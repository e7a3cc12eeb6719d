//! Checks of the names (streams, subjects, key prefixes), fractions and durations that settings
//! take: a bad value is refused at start, naming the setting, rather than later by the server it
//! is sent to.

use std::ops::RangeInclusive;
use std::time::Duration;

use clap::builder::TypedValueParser;

/// A whole number of milliseconds within `range` (the setting keeps its unit in its name, `_MS`),
/// read as the `Duration` the program uses; clap's own message names a number out of range.
pub(super) fn millis(range: RangeInclusive<u64>) -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64)
        .range(range)
        .map(Duration::from_millis)
}

/// As [`millis`], in whole seconds (`_SECS`).
pub(super) fn secs(range: RangeInclusive<u64>) -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64)
        .range(range)
        .map(Duration::from_secs)
}

pub(super) fn parse_key_prefix(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("use 1 to 64 characters from A-Z, a-z, 0-9, '-', '_' and '.'".to_owned())
    }
}

pub(super) fn parse_fraction(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err("a fraction from 0 to 1, such as 0.05".to_owned()),
    }
}

/// A stream or consumer name: 1 to 64 of A-Z, a-z, 0-9, '-' and '_' (no dots, wildcards or
/// spaces, which JetStream refuses).
pub(super) fn parse_stream_name(raw: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("use 1 to 64 characters from A-Z, a-z, 0-9, '-' and '_'".to_owned())
    }
}

/// A subject to publish on (or a prefix): dot-separated tokens of visible ASCII, no wildcards.
pub(super) fn parse_subject(raw: &str) -> Result<String, String> {
    let ok = (1..=128).contains(&raw.len())
        && raw.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
        });
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("use dot-separated tokens of visible ASCII without '*' or '>', such as vehicles or vehicle-state.dead-letter".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_key_prefixes_are_refused() {
        for bad in ["", "has space", "a:b", &"x".repeat(65)] {
            assert!(parse_key_prefix(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_key_prefix("vehicle-state_2.x"),
            Ok("vehicle-state_2.x".to_owned())
        );
    }
}
