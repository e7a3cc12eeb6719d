//! What is cached for one lookup, and its byte format in Redis.

use actix_web::http::header::HeaderValue;
use actix_web::web::Bytes;

use crate::domain::Outcome;

/// An answer as it is cached: the outcome and, for a found vehicle, the ready response body, so a
/// hit does no JSON work; `read_at_ms` is when PostgreSQL was asked (Unix ms): the age of the
/// answer, whichever replica or tier holds it.
///
/// A lookup's answer holds for every instant from `start_us` (inclusive) to `end_us`
/// (exclusive), in microseconds since the Unix epoch: the segment of the vehicle's history it
/// was read in ([`OPEN_START`] and [`OPEN_END`] for no bound). Its body is then the answer
/// without the instant asked (`timestamp`), which [`RenderedAnswer::body_at`] adds per request.
/// A timeline page's answer covers everything, and its body is served as it is.
///
/// `version` is the vehicle's version (`vehicles.version`) read in the same snapshot: an answer
/// older than a version the change feed announced is never cached nor served from a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedAnswer {
    pub outcome: Outcome,
    pub body: Bytes,
    pub read_at_ms: i64,
    pub start_us: i64,
    pub end_us: i64,
    pub version: u64,
}

/// The start of a segment with none: it reaches back to the first instant there is.
pub const OPEN_START: i64 = i64::MIN;
/// The end of a segment with none: it holds until further notice (no change after it yet).
pub const OPEN_END: i64 = i64::MAX;

/// The bytes before the body: tag, read time, start, end and version.
const HEADER: usize = 1 + 8 + 8 + 8 + 8;

/// Why bytes from Redis are not a [`RenderedAnswer`].
#[derive(Debug, thiserror::Error)]
#[error("the cached value is not an answer ({0})")]
pub struct Corrupt(&'static str);

impl RenderedAnswer {
    /// Whether the answer holds at `at_us` (microseconds since the Unix epoch).
    pub fn covers(&self, at_us: i64) -> bool {
        self.start_us <= at_us && at_us < self.end_us
    }

    /// The response body for the instant `at`: the cached object with `"timestamp"` added as
    /// its last member (a timeline page's body, or a 404's empty one, as it is).
    pub fn body_at(&self, at: Option<crate::domain::Timestamp>) -> Bytes {
        let Some(at) = at.filter(|_| self.outcome == Outcome::Found) else {
            return self.body.clone();
        };
        let mut out = Vec::with_capacity(self.body.len() + 48);
        self.write_at(&mut out, at);
        Bytes::from(out)
    }

    /// [`RenderedAnswer::body_at`] for a found answer, written onto `out` (a batch's body).
    pub fn write_at(&self, out: &mut Vec<u8>, at: crate::domain::Timestamp) {
        // A found body is an object (checked when decoded): all but its closing brace, then the
        // instant, then the brace.
        let open = self.body.len().saturating_sub(1);
        out.extend_from_slice(&self.body[..open]);
        out.extend_from_slice(b",\"timestamp\":\"");
        at.write_rfc3339(out);
        out.extend_from_slice(b"\"}");
    }

    /// `[outcome tag][read time][start][end][version][body]`, the four numbers 8 bytes
    /// big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.body.len());
        out.push(match self.outcome {
            Outcome::Found => b'F',
            Outcome::UnknownVehicle => b'U',
            Outcome::NoStateYet => b'N',
        });
        out.extend_from_slice(&self.read_at_ms.to_be_bytes());
        out.extend_from_slice(&self.start_us.to_be_bytes());
        out.extend_from_slice(&self.end_us.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// A strong entity tag for a found answer: FNV-1a (64 bits) of its body, the same on every
    /// replica and across builds. `None` for the 404 outcomes, whose bodies are made per request.
    pub fn etag(&self) -> Option<HeaderValue> {
        if self.outcome != Outcome::Found {
            return None;
        }
        let hash = self.body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        HeaderValue::from_str(&format!("\"{hash:016x}\"")).ok()
    }

    /// The inverse of [`RenderedAnswer::encode`]. Checks the shape cheaply (tag, length, a
    /// segment that is not empty, a JSON object for a found vehicle) so that garbage is refused
    /// without parsing JSON on every hit.
    pub fn decode(raw: Bytes) -> Result<Self, Corrupt> {
        let number = |at: usize| -> Result<i64, Corrupt> {
            raw.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_be_bytes)
                .ok_or(Corrupt("too short"))
        };
        let (tag, read_at_ms, start_us, end_us, version) = (
            raw.first().copied().ok_or(Corrupt("too short"))?,
            number(1)?,
            number(9)?,
            number(17)?,
            number(25)?,
        );
        if start_us >= end_us {
            return Err(Corrupt("an empty segment"));
        }
        let body = raw.slice(HEADER..);
        let outcome = match tag {
            b'F' if body.first() == Some(&b'{') && body.last() == Some(&b'}') => Outcome::Found,
            b'U' if body.is_empty() => Outcome::UnknownVehicle,
            b'N' if body.is_empty() => Outcome::NoStateYet,
            b'F' | b'U' | b'N' => return Err(Corrupt("body does not match the outcome")),
            _ => return Err(Corrupt("unknown outcome tag")),
        };
        Ok(Self {
            outcome,
            body,
            read_at_ms,
            start_us,
            end_us,
            version: version.cast_unsigned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_round_trips_through_its_bytes() {
        for (outcome, body) in [
            (Outcome::Found, &br#"{"state":"sold"}"#[..]),
            (Outcome::UnknownVehicle, &b""[..]),
            (Outcome::NoStateYet, &b""[..]),
        ] {
            let answer = RenderedAnswer {
                outcome,
                body: Bytes::from_static(body),
                read_at_ms: 1_662_976_800_123,
                start_us: 1_662_000_000_000_000,
                end_us: OPEN_END,
                version: u64::MAX - 7,
            };

            let decoded = RenderedAnswer::decode(Bytes::from(answer.encode()));

            assert_eq!(decoded.ok(), Some(answer));
        }
    }

    #[test]
    fn a_found_answer_has_a_strong_etag_that_changes_with_its_body() {
        let answer = |outcome, body: &'static [u8]| RenderedAnswer {
            outcome,
            body: Bytes::from_static(body),
            read_at_ms: 1,
            start_us: OPEN_START,
            end_us: OPEN_END,
            version: 1,
        };
        let sold = answer(Outcome::Found, br#"{"state":"sold"}"#).etag();
        let selling = answer(Outcome::Found, br#"{"state":"selling"}"#).etag();

        let sold = sold.expect("a tag");
        assert_eq!(sold.len(), 18, "{sold:?}");
        assert!(
            sold.to_str()
                .is_ok_and(|t| t.starts_with('"') && t.ends_with('"'))
        );
        assert_eq!(
            Some(&sold),
            answer(Outcome::Found, br#"{"state":"sold"}"#)
                .etag()
                .as_ref()
        );
        assert_ne!(Some(sold), selling);
        assert_eq!(answer(Outcome::UnknownVehicle, b"").etag(), None);
    }

    #[test]
    fn a_found_body_gets_the_instant_asked_as_its_last_member() {
        let answer = RenderedAnswer {
            outcome: Outcome::Found,
            body: Bytes::from_static(br#"{"state":"sold","until":null}"#),
            read_at_ms: 1,
            start_us: 0,
            end_us: OPEN_END,
            version: 0,
        };
        let at = crate::domain::Timestamp::parse("2022-09-12T10:00:00.5Z").ok();

        let body = answer.body_at(at);

        assert_eq!(
            &body[..],
            br#"{"state":"sold","until":null,"timestamp":"2022-09-12T10:00:00.500Z"}"#
        );
        assert_eq!(answer.body_at(None), answer.body);
        assert!(answer.covers(0) && answer.covers(i64::MAX - 1) && !answer.covers(-1));
    }

    #[test]
    fn a_segment_body_and_the_instant_make_the_answer_as_it_serialises() {
        for until in [None, Some("2022-09-12T12:41:41.5Z".parse().expect("valid"))] {
            let answer = crate::domain::StateAnswer {
                vehicle: crate::domain::Vehicle {
                    id: 3,
                    make: "VW \"Golf\"".into(),
                    model: "GOLF".into(),
                },
                state: "selling".into(),
                state_since: "2022-09-11T23:21:38.000001Z".parse().expect("valid"),
                until,
                timestamp: crate::domain::Timestamp::parse("2022-09-12 10:00:00.25+00")
                    .expect("valid"),
            };
            let segment = crate::domain::Lookup::Found(answer.clone()).render();
            let cached = RenderedAnswer {
                outcome: segment.outcome,
                body: segment.body.into(),
                read_at_ms: 0,
                start_us: segment.start_us.unwrap_or(i64::MIN),
                end_us: segment.end_us.unwrap_or(i64::MAX),
                version: 3,
            };

            let body = cached.body_at(Some(answer.timestamp));

            assert_eq!(
                body,
                serde_json::to_vec(&answer).expect("serialises"),
                "{until:?}"
            );
            assert_eq!(cached.start_us, answer.state_since.timestamp_micros());
        }
    }

    #[test]
    fn garbage_is_refused() {
        let mut found = vec![b'F'];
        for n in [0i64, 0, 1, 0] {
            found.extend_from_slice(&n.to_be_bytes());
        }
        let mut empty = vec![b'U'];
        for n in [0i64, 5, 5, 0] {
            empty.extend_from_slice(&n.to_be_bytes());
        }
        for raw in [
            &b""[..],
            b"F",
            b"F1234567",
            b"\xff\x00not json at all",
            b"X\0\0\0\0\0\0\0\0",
            b"U\0\0\0\0\0\0\0\0{}",
            &found,
            &found[..30],
            &empty,
            &[&found[..], b"{unterminated"].concat(),
        ] {
            assert!(
                RenderedAnswer::decode(Bytes::copy_from_slice(raw)).is_err(),
                "{raw:?}"
            );
        }
    }
}
