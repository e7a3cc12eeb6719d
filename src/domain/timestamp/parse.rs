//! Text to a [`Timestamp`]: the spellings a client may use, and the reason for any other.

use chrono::format::ParseErrorKind;
use chrono::{DateTime, NaiveDate, NaiveDateTime};

use super::Timestamp;

/// The forms a client may use, repeated in every rejection so the fix is in the answer.
pub const ACCEPTED_FORMS: &str = "Accepted forms: RFC 3339 with an offset \
(2022-09-12T10:00:00Z, 2022-09-12T12:00:00.25+02:00); PostgreSQL style with a space and an offset \
of hours, hours:minutes or hhmm (2022-09-12 10:00:00+00, 2022-09-12 15:00:00+05, \
2022-09-12 15:30:00+05:30, 2022-09-12 15:30:00+0530); or integer Unix epoch seconds (1662976800).";

/// Why a path segment is not an instant. Shown to clients as the problem detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("the timestamp has no UTC offset, so it names no single instant. {ACCEPTED_FORMS}")]
    MissingOffset,
    #[error("the timestamp names a date or time that does not exist. {ACCEPTED_FORMS}")]
    ImpossibleDate,
    #[error(
        "the timestamp must lie between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z. {ACCEPTED_FORMS}"
    )]
    OutOfRange,
    #[error("the timestamp is not in a recognised form. {ACCEPTED_FORMS}")]
    Unrecognised,
    #[error(
        "the offset's `+` arrived as a space: in a query string `+` stands for a space, so send it as `%2B` (`2022-09-12T12:00:00%2B02:00`)"
    )]
    PlusSentAsSpace,
}

/// Longer input is junk by construction (the longest accepted spelling has 35 characters); the
/// bound keeps the parsers' work per request small whatever a client sends.
const MAX_INPUT_LEN: usize = 64;

/// The PostgreSQL output style (`2022-09-12 10:00:00+00`). `%#z` takes `+05`, `+0530` and
/// `+05:30`; `%.f` takes an optional fraction.
const PG_SPACE: &str = "%Y-%m-%d %H:%M:%S%.f%#z";
const PG_T: &str = "%Y-%m-%dT%H:%M:%S%.f%#z";

impl Timestamp {
    /// A value read from a query string, where `+` stands for a space: an offset written with
    /// a bare `+` arrives with a space in its place, and is refused saying so, rather than as
    /// a form not recognised. (In a path, `+` is itself.)
    pub fn parse_query_value(raw: &str) -> Result<Self, TimestampError> {
        Self::parse(raw).map_err(|error| {
            let with_plus = |at: usize| format!("{}+{}", &raw[..at], &raw[at + 1..]);
            if raw
                .match_indices(' ')
                .any(|(at, _)| Self::parse(&with_plus(at)).is_ok())
            {
                TimestampError::PlusSentAsSpace
            } else {
                error
            }
        })
    }

    pub fn parse(raw: &str) -> Result<Self, TimestampError> {
        if raw.is_empty() || raw.len() > MAX_INPUT_LEN {
            return Err(TimestampError::Unrecognised);
        }
        if is_epoch_seconds(raw) {
            // Longer than any i64 (leading zeros included): out of range.
            if raw.trim_start_matches('-').len() > 19 {
                return Err(TimestampError::OutOfRange);
            }
            // Any overflow, in the integer or in the conversion, means out of range.
            let micros = raw
                .parse::<i64>()
                .ok()
                .and_then(|secs| secs.checked_mul(1_000_000))
                .ok_or(TimestampError::OutOfRange)?;
            return Self::from_unix_micros(micros).ok_or(TimestampError::OutOfRange);
        }
        if !has_date_time_shape(raw) {
            return Err(TimestampError::Unrecognised);
        }
        let parsed = DateTime::parse_from_rfc3339(raw)
            .or_else(|_| DateTime::parse_from_str(raw, PG_SPACE))
            .or_else(|_| DateTime::parse_from_str(raw, PG_T));
        match parsed {
            // chrono also reads fields shorter than their width (`2022-9-2T1:2:3Z`) and an offset
            // with a dangling colon (`-05:`); the accepted forms have neither.
            Ok(_) if !has_full_width_fields(raw) || !has_documented_tail(raw) => {
                Err(TimestampError::Unrecognised)
            }
            // `timestamp_micros` folds a leap second (:60) into the next second, as Postgres does.
            Ok(dt) => {
                Self::from_unix_micros(dt.timestamp_micros()).ok_or(TimestampError::OutOfRange)
            }
            Err(_) => Err(diagnose(raw)),
        }
    }
}

fn is_epoch_seconds(raw: &str) -> bool {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `dddd-dd-dd`, a `T`, `t` or space, `dd:dd:dd`: the date and time at full width.
fn has_full_width_fields(raw: &str) -> bool {
    let b = raw.as_bytes();
    let digits = |from: usize, to: usize| {
        b.get(from..to)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    digits(0, 4)
        && b.get(4) == Some(&b'-')
        && digits(5, 7)
        && b.get(7) == Some(&b'-')
        && digits(8, 10)
        && matches!(b.get(10), Some(b'T' | b't' | b' '))
        && digits(11, 13)
        && b.get(13) == Some(&b':')
        && digits(14, 16)
        && b.get(16) == Some(&b':')
        && digits(17, 19)
}

/// What follows the seconds: an optional fraction (a dot and digits), then `Z`, `z` or a sign
/// and an offset of `hh`, `hhmm` or `hh:mm`.
fn has_documented_tail(raw: &str) -> bool {
    let Some(tail) = raw.get(19..) else {
        return false;
    };
    let tail = match tail.strip_prefix('.') {
        Some(fraction) => {
            let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return false;
            }
            &fraction[digits..]
        }
        None => tail,
    };
    let digits = |d: &[&u8]| d.iter().all(|b| b.is_ascii_digit());
    match tail.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2] => digits(&[h1, h2]),
        [b'+' | b'-', h1, h2, m1, m2] | [b'+' | b'-', h1, h2, b':', m1, m2] => {
            digits(&[h1, h2, m1, m2])
        }
        _ => false,
    }
}

/// chrono's parsers skip white space in places; the accepted forms have none but the one
/// separating date and time, so anything else is refused before parsing.
fn has_date_time_shape(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_digit)
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| b.is_ascii_graphic() || (i == 10 && *b == b' '))
}

/// Turns a failed parse into the most helpful reason. Only runs on rejected input.
fn diagnose(raw: &str) -> TimestampError {
    let naive = NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f"))
        .map(|_| ())
        .or_else(|_| NaiveDate::parse_from_str(raw, "%Y-%m-%d").map(|_| ()));
    if naive.is_ok() {
        return TimestampError::MissingOffset;
    }
    let kinds = [
        DateTime::parse_from_rfc3339(raw).err(),
        DateTime::parse_from_str(raw, PG_SPACE).err(),
        DateTime::parse_from_str(raw, PG_T).err(),
        NaiveDate::parse_from_str(raw, "%Y-%m-%d").err(),
    ];
    let impossible = kinds.iter().flatten().any(|e| {
        matches!(
            e.kind(),
            ParseErrorKind::OutOfRange | ParseErrorKind::Impossible
        )
    });
    if impossible {
        TimestampError::ImpossibleDate
    } else {
        TimestampError::Unrecognised
    }
}
