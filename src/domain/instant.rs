use std::fmt;

use chrono::format::ParseErrorKind;
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time as the service uses it: UTC, whole microseconds (the precision of Postgres'
/// `timestamptz`), between 0001-01-01 and 9999-12-31. Every accepted spelling of one instant
/// becomes the same value, so it can key the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instant(DateTime<Utc>);

/// The forms a client may use, repeated in every rejection so the fix is in the answer.
pub const ACCEPTED_FORMS: &str = "Accepted forms: RFC 3339 with an offset \
(2022-09-12T10:00:00Z, 2022-09-12T12:00:00.25+02:00); PostgreSQL style with a space and an offset \
of hours, hours:minutes or hhmm (2022-09-12 10:00:00+00, 2022-09-12 15:00:00+05, \
2022-09-12 15:30:00+05:30, 2022-09-12 15:30:00+0530); or integer Unix epoch seconds (1662976800).";

/// Why a path segment is not an instant. Shown to clients as the problem detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InstantError {
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
}

/// Longer input is junk by construction (the longest accepted spelling has 35 characters); the
/// bound keeps the parsers' work per request small whatever a client sends.
const MAX_INPUT_LEN: usize = 64;

/// The PostgreSQL output style (`2022-09-12 10:00:00+00`). `%#z` takes `+05`, `+0530` and
/// `+05:30`; `%.f` takes an optional fraction.
const PG_SPACE: &str = "%Y-%m-%d %H:%M:%S%.f%#z";
const PG_T: &str = "%Y-%m-%dT%H:%M:%S%.f%#z";

impl Instant {
    /// Every spelling [`Instant::parse`] accepts matches this (an ECMA-262 regular expression,
    /// for the OpenAPI document: generated clients and Swagger UI check input with it). Not
    /// every match is an instant (`2022-13-45T…`): the parser has the last word.
    pub const PATTERN: &'static str = r"^(-?[0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?))$";

    /// 0001-01-01T00:00:00Z
    const MIN_MICROS: i64 = -62_135_596_800_000_000;
    /// 9999-12-31T23:59:59.999999Z
    const MAX_MICROS: i64 = 253_402_300_799_999_999;

    pub fn parse(raw: &str) -> Result<Self, InstantError> {
        if raw.is_empty() || raw.len() > MAX_INPUT_LEN {
            return Err(InstantError::Unrecognised);
        }
        if is_epoch_seconds(raw) {
            // Longer than any i64 (leading zeros included): out of range, as `PATTERN` says.
            if raw.trim_start_matches('-').len() > 19 {
                return Err(InstantError::OutOfRange);
            }
            // Any overflow, in the integer or in the conversion, means out of range.
            let micros = raw
                .parse::<i64>()
                .ok()
                .and_then(|secs| secs.checked_mul(1_000_000))
                .ok_or(InstantError::OutOfRange)?;
            return Self::from_unix_micros(micros).ok_or(InstantError::OutOfRange);
        }
        if !has_date_time_shape(raw) {
            return Err(InstantError::Unrecognised);
        }
        let parsed = DateTime::parse_from_rfc3339(raw)
            .or_else(|_| DateTime::parse_from_str(raw, PG_SPACE))
            .or_else(|_| DateTime::parse_from_str(raw, PG_T));
        match parsed {
            // chrono also reads fields shorter than their width (`2022-9-2T1:2:3Z`) and an offset
            // with a dangling colon (`-05:`); the accepted forms, and `PATTERN`, have neither.
            Ok(_) if !has_full_width_fields(raw) || !has_documented_tail(raw) => {
                Err(InstantError::Unrecognised)
            }
            // `timestamp_micros` folds a leap second (:60) into the next second, as Postgres does.
            Ok(dt) => Self::from_unix_micros(dt.timestamp_micros()).ok_or(InstantError::OutOfRange),
            Err(_) => Err(diagnose(raw)),
        }
    }

    /// The instant at `micros` microseconds since the Unix epoch, if within the supported range.
    pub fn from_unix_micros(micros: i64) -> Option<Self> {
        if !(Self::MIN_MICROS..=Self::MAX_MICROS).contains(&micros) {
            return None;
        }
        DateTime::from_timestamp_micros(micros).map(Self)
    }

    pub fn unix_micros(self) -> i64 {
        self.0.timestamp_micros()
    }

    pub fn as_datetime(self) -> DateTime<Utc> {
        self.0
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
fn diagnose(raw: &str) -> InstantError {
    let naive = NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f"))
        .map(|_| ())
        .or_else(|_| NaiveDate::parse_from_str(raw, "%Y-%m-%d").map(|_| ()));
    if naive.is_ok() {
        return InstantError::MissingOffset;
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
        InstantError::ImpossibleDate
    } else {
        InstantError::Unrecognised
    }
}

impl fmt::Display for Instant {
    /// RFC 3339 in UTC with `Z`, with as many fraction digits as needed (none, 3 or 6).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

impl Serialize for Instant {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Instant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Instant::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn utc(raw: &str) -> String {
        Instant::parse(raw)
            .map(|i| i.to_string())
            .unwrap_or_else(|e| format!("error: {e:?}"))
    }

    #[test]
    fn every_accepted_form_gives_the_same_utc_instant() {
        let cases = [
            ("2022-09-12T10:00:00Z", "2022-09-12T10:00:00Z"),
            ("2022-09-12t10:00:00z", "2022-09-12T10:00:00Z"),
            ("2022-09-12T10:00:00+00:00", "2022-09-12T10:00:00Z"),
            ("2022-09-12T15:00:00+05:00", "2022-09-12T10:00:00Z"),
            ("2022-09-12T05:00:00-05:00", "2022-09-12T10:00:00Z"),
            ("2022-09-12T10:00:00.5Z", "2022-09-12T10:00:00.500Z"),
            ("2022-09-12T10:00:00.123456Z", "2022-09-12T10:00:00.123456Z"),
            (
                "2022-09-12T10:00:00.1234567Z",
                "2022-09-12T10:00:00.123456Z",
            ),
            (
                "2022-09-12T10:00:00.999999999Z",
                "2022-09-12T10:00:00.999999Z",
            ),
            ("2022-09-12 10:00:00Z", "2022-09-12T10:00:00Z"),
            ("2022-09-12 10:00:00+00", "2022-09-12T10:00:00Z"),
            ("2022-09-12 15:00:00+05", "2022-09-12T10:00:00Z"),
            ("2022-09-12 15:30:00+05:30", "2022-09-12T10:00:00Z"),
            ("2022-09-12 15:30:00+0530", "2022-09-12T10:00:00Z"),
            ("2022-09-12 07:00:00-03", "2022-09-12T10:00:00Z"),
            ("2022-09-12 10:00:00.25+00", "2022-09-12T10:00:00.250Z"),
            ("2022-09-12T15:00:00+05", "2022-09-12T10:00:00Z"),
            ("1662976800", "2022-09-12T10:00:00Z"),
            ("0", "1970-01-01T00:00:00Z"),
            ("-86400", "1969-12-31T00:00:00Z"),
            ("2016-12-31T23:59:60Z", "2017-01-01T00:00:00Z"),
            ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
            ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z"),
            ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00Z"),
        ];
        for (raw, expected) in cases {
            assert_eq!(utc(raw), expected, "{raw:?}");
        }
    }

    #[test]
    fn rejected_input_gets_the_reason_that_helps_most() {
        use InstantError::*;
        let cases = [
            ("2022-09-12", MissingOffset),
            ("2022-09-12T10:00:00", MissingOffset),
            ("2022-09-12 10:00:00", MissingOffset),
            ("2022-09-12 10:00:00.5", MissingOffset),
            ("2022-02-30T10:00:00Z", ImpossibleDate),
            ("2022-13-01 10:00:00+00", ImpossibleDate),
            ("2022-09-12T25:00:00Z", ImpossibleDate),
            ("2023-02-29", ImpossibleDate),
            ("99999999999999999999", OutOfRange),
            ("-99999999999", OutOfRange),
            ("253402300800", OutOfRange),
            ("", Unrecognised),
            ("now", Unrecognised),
            ("yesterday", Unrecognised),
            ("2022-09-12T10:00:00ZZ", Unrecognised),
            (" 2022-09-12T10:00:00Z", Unrecognised),
            ("2022-09-12T10:00:00Z ", Unrecognised),
            ("1662976800.5", Unrecognised),
            ("+1662976800", Unrecognised),
            ("-", Unrecognised),
            ("12/09/2022", Unrecognised),
            ("2022-09-12T10:00:00+5", Unrecognised),
            ("2022-09-12 10:00:00 +00", Unrecognised),
            ("2022-09-12  10:00:00+00", Unrecognised),
            ("2022-09-12\t10:00:00+00", Unrecognised),
            ("2022-09-12T10:00:00\u{a0}Z", Unrecognised),
        ];
        for (raw, expected) in cases {
            assert_eq!(Instant::parse(raw), Err(expected), "{raw:?}");
        }
        assert_eq!(Instant::parse(&"1".repeat(65)), Err(Unrecognised));
    }

    #[test]
    fn an_offset_with_a_dangling_colon_is_refused_not_read_as_whole_hours() {
        // Found by fuzz/fuzz_targets/instant.rs: chrono's `%#z` took `-05:` as `-05:00`.
        for raw in [
            "2022-09-12T05:00:00-05:",
            "2022-09-12 05:00:00-05:",
            "2022-09-12T05:00:00.5+05:",
        ] {
            assert_eq!(
                Instant::parse(raw),
                Err(InstantError::Unrecognised),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn every_rejection_names_the_accepted_forms() {
        for e in [
            InstantError::MissingOffset,
            InstantError::ImpossibleDate,
            InstantError::OutOfRange,
            InstantError::Unrecognised,
        ] {
            assert!(e.to_string().ends_with(ACCEPTED_FORMS), "{e}");
        }
    }

    #[test]
    fn serde_round_trips_through_the_rfc3339_spelling() {
        let instant = Instant::parse("2022-09-12 15:30:00.123+05:30").expect("valid");
        let json = serde_json::to_string(&instant).expect("serialises");
        assert_eq!(json, "\"2022-09-12T10:00:00.123Z\"");
        assert_eq!(
            serde_json::from_str::<Instant>(&json).expect("parses"),
            instant
        );
    }

    proptest! {
        #[test]
        fn every_accepted_spelling_matches_the_documented_pattern(
            raw in "\\PC{0,40}|[0-9T:+ .Zz-]{0,32}|-?0{0,4}[0-9]{1,20}|[0-9]{1,4}-[0-9]{1,2}-[0-9]{1,2}[Tt ][0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(Z|[+-][0-9]{1,2}(:[0-9]{2})?)|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)"
        ) {
            let pattern = regex::Regex::new(Instant::PATTERN).expect("a valid expression");
            if Instant::parse(&raw).is_ok() {
                prop_assert!(pattern.is_match(&raw), "{raw:?} is accepted but does not match");
            }
        }

        #[test]
        fn any_string_parses_within_range_or_gives_a_reason(raw in "\\PC{0,80}|[0-9T:+ .Z-]{0,40}") {
            match Instant::parse(&raw) {
                Ok(instant) => prop_assert!(
                    (Instant::MIN_MICROS..=Instant::MAX_MICROS).contains(&instant.unix_micros())
                ),
                // The 400's detail: a reason and the accepted forms, never empty.
                Err(reason) => prop_assert!(reason.to_string().contains("Accepted forms")),
            }
        }

        #[test]
        fn every_spelling_of_an_instant_round_trips(
            micros in Instant::MIN_MICROS..=Instant::MAX_MICROS,
            offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59),
        ) {
            let instant = Instant::from_unix_micros(micros).expect("in range");
            let offset = chrono::FixedOffset::east_opt(offset_minutes * 60).expect("valid offset");
            let local = instant.as_datetime().with_timezone(&offset);
            // Offsets can push the local year out of four digits at the very ends of the range.
            prop_assume!((1..=9999).contains(&chrono::Datelike::year(&local)));
            let rfc3339 = local.to_rfc3339_opts(SecondsFormat::Micros, false);
            prop_assert_eq!(Instant::parse(&rfc3339), Ok(instant));
            let pg = local.format("%Y-%m-%d %H:%M:%S%.6f%z").to_string();
            prop_assert_eq!(Instant::parse(&pg), Ok(instant));
            prop_assert_eq!(Instant::parse(&instant.to_string()), Ok(instant));
            let whole_seconds = micros.div_euclid(1_000_000);
            prop_assert_eq!(
                Instant::parse(&whole_seconds.to_string()).map(Instant::unix_micros),
                Ok(whole_seconds * 1_000_000)
            );
        }
    }
}
