//! What is cached for one lookup, and its byte format in Redis.

use actix_web::http::header::HeaderValue;
use actix_web::web::Bytes;

use crate::domain::Outcome;

/// One lookup's answer as it is served: the outcome and, for a found vehicle, the ready response
/// body, so a hit does no JSON work. `read_at_ms` is when PostgreSQL was asked (Unix ms): the age
/// of the answer, whichever replica or tier holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedAnswer {
    pub outcome: Outcome,
    pub body: Bytes,
    pub read_at_ms: i64,
}

/// Why bytes from Redis are not a [`RenderedAnswer`].
#[derive(Debug, thiserror::Error)]
#[error("the cached value is not an answer ({0})")]
pub struct Corrupt(&'static str);

impl RenderedAnswer {
    /// `[outcome tag][read time, 8 bytes big-endian][body]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.body.len());
        out.push(match self.outcome {
            Outcome::Found => b'F',
            Outcome::UnknownVehicle => b'U',
            Outcome::NoStateYet => b'N',
        });
        out.extend_from_slice(&self.read_at_ms.to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// The inverse of [`RenderedAnswer::encode`]. Checks the shape cheaply (tag, length, a JSON object for
    /// a found vehicle) so that garbage is refused without parsing JSON on every hit.
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

    pub fn decode(raw: Bytes) -> Result<Self, Corrupt> {
        let (Some(&tag), Some(time)) = (raw.first(), raw.get(1..9)) else {
            return Err(Corrupt("too short"));
        };
        let read_at_ms = i64::from_be_bytes(time.try_into().map_err(|_| Corrupt("too short"))?);
        let body = raw.slice(9..);
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
    fn garbage_is_refused() {
        let mut found = vec![b'F'];
        found.extend_from_slice(&0i64.to_be_bytes());
        for raw in [
            &b""[..],
            b"F",
            b"F1234567",
            b"\xff\x00not json at all",
            b"X\0\0\0\0\0\0\0\0",
            b"U\0\0\0\0\0\0\0\0{}",
            &found,
            &[&found[..], b"{unterminated"].concat(),
        ] {
            assert!(
                RenderedAnswer::decode(Bytes::copy_from_slice(raw)).is_err(),
                "{raw:?}"
            );
        }
    }
}
