mod parse;

pub use parse::TimestampError;

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time as the service uses it: UTC, whole microseconds (the precision of Postgres'
/// `timestamptz`), between 0001-01-01 and 9999-12-31. Every accepted spelling of one instant
/// becomes the same value, so it can key the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// 0001-01-01T00:00:00Z
    const MIN_MICROS: i64 = -62_135_596_800_000_000;
    /// 9999-12-31T23:59:59.999999Z
    const MAX_MICROS: i64 = 253_402_300_799_999_999;

    /// The instant at `micros` microseconds since the Unix epoch, if within the supported range.
    pub fn from_unix_micros(micros: i64) -> Option<Self> {
        if !(Self::MIN_MICROS..=Self::MAX_MICROS).contains(&micros) {
            return None;
        }
        DateTime::from_timestamp_micros(micros).map(Self)
    }

    /// The last instant there is: 9999-12-31T23:59:59.999999Z.
    pub fn last() -> Self {
        Self(DateTime::from_timestamp_micros(Self::MAX_MICROS).unwrap_or(DateTime::<Utc>::MAX_UTC))
    }

    /// The server's clock, truncated to whole microseconds.
    pub fn now() -> Self {
        Self(DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap_or_default())
    }

    /// A lookup's instant: the word `now` is the server's clock (and says so, `true`); any
    /// other text is parsed as [`Timestamp::parse`] does.
    pub fn parse_or_now(raw: &str) -> Result<(Self, bool), TimestampError> {
        if raw == "now" {
            return Ok((Self::now(), true));
        }
        Self::parse(raw).map(|at| (at, false))
    }

    pub fn unix_micros(self) -> i64 {
        self.0.timestamp_micros()
    }

    pub fn as_datetime(self) -> DateTime<Utc> {
        self.0
    }
}

impl Timestamp {
    /// What `Display` writes (RFC 3339 in UTC with `Z`, no, 3 or 6 fraction digits), appended
    /// to `out` without a `String` or the formatting machinery: a cached answer's body gets its
    /// instant this way on every hit.
    pub fn write_rfc3339(self, out: &mut Vec<u8>) {
        use chrono::{Datelike, Timelike};
        let t = self.0;
        // Within 0001 to 9999 (the type's range), a year is four digits.
        let year = u32::try_from(t.year()).unwrap_or(0);
        let mut text = [0u8; 27];
        let mut at = 0;
        let mut put = |n: u32, width: usize, after: Option<u8>| {
            let mut n = n;
            for i in (0..width).rev() {
                // A digit: n % 10 < 10.
                text[at + i] = b'0' + u8::try_from(n % 10).unwrap_or(0);
                n /= 10;
            }
            at += width;
            if let Some(separator) = after {
                text[at] = separator;
                at += 1;
            }
        };
        put(year, 4, Some(b'-'));
        put(t.month(), 2, Some(b'-'));
        put(t.day(), 2, Some(b'T'));
        put(t.hour(), 2, Some(b':'));
        put(t.minute(), 2, Some(b':'));
        let micros = t.timestamp_subsec_micros();
        match micros {
            0 => put(t.second(), 2, Some(b'Z')),
            _ if micros.is_multiple_of(1000) => {
                put(t.second(), 2, Some(b'.'));
                put(micros / 1000, 3, Some(b'Z'));
            }
            _ => {
                put(t.second(), 2, Some(b'.'));
                put(micros, 6, Some(b'Z'));
            }
        }
        out.extend_from_slice(&text[..at]);
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with `Z`, with as many fraction digits as needed (none, 3 or 6).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
