//! Bytes to an [`Event`]: every field checked, and anything else a [`Rejection`] naming it.

use serde::Deserialize;

use super::{
    Event, EventKind, MAX_EVENT_ID_LEN, MAX_NAME_LEN, Registration, Rejection, StateChange,
    VehicleState,
};
use crate::domain::{Timestamp, VehicleId};

/// The JSON of both kinds, as sent; every field checked in [`Event::parse`]. Unknown fields are
/// ignored, so publishers can add fields without breaking older consumers.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRegistration {
    event_id: String,
    vehicle_id: serde_json::Number,
    make: String,
    model: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStateChange {
    event_id: String,
    vehicle_id: serde_json::Number,
    state: String,
    timestamp: RawTimestamp,
}

/// An instant as a string in any form the API takes, or a JSON integer of Unix seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawTimestamp {
    Text(String),
    Seconds(i64),
}

impl Event {
    /// The event in `payload`, sent on a subject of `kind`.
    pub fn parse(kind: EventKind, payload: &[u8]) -> Result<Self, Rejection> {
        match kind {
            EventKind::Registered => {
                let raw: RawRegistration = from_json(payload)?;
                event_id(&raw.event_id)?;
                Ok(Event::Registered(Registration {
                    vehicle: vehicle_id(&raw.vehicle_id)?,
                    make: name("make", raw.make)?,
                    model: name("model", raw.model)?,
                }))
            }
            EventKind::StateChanged => {
                let raw: RawStateChange = from_json(payload)?;
                event_id(&raw.event_id)?;
                let state = VehicleState::parse(&raw.state).ok_or_else(|| {
                    Rejection::new(format!(
                        "state: {:?} is not a state (quoted, selling or sold)",
                        truncated(&raw.state)
                    ))
                })?;
                let at = match raw.timestamp {
                    RawTimestamp::Text(text) => Timestamp::parse(&text).map_err(|e| {
                        Rejection::new(format!("timestamp: {:?}: {e}", truncated(&text)))
                    })?,
                    RawTimestamp::Seconds(secs) => Timestamp::parse(&secs.to_string())
                        .map_err(|e| Rejection::new(format!("timestamp: {secs}: {e}")))?,
                };
                Ok(Event::StateChanged(StateChange {
                    vehicle: vehicle_id(&raw.vehicle_id)?,
                    state,
                    at,
                }))
            }
        }
    }
}

fn from_json<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, Rejection> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." && !inner.to_string().starts_with("missing field") {
            Rejection::new(format!("not an event: {inner}"))
        } else if path == "." {
            Rejection::new(inner.to_string())
        } else {
            Rejection::new(format!("{path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| Rejection::new(format!("not an event: {e}")))?;
    Ok(value)
}

fn event_id(raw: &str) -> Result<(), Rejection> {
    let len = raw.chars().count();
    if (1..=MAX_EVENT_ID_LEN).contains(&len) {
        Ok(())
    } else {
        Err(Rejection::new(format!(
            "eventId: {len} characters; 1 to {MAX_EVENT_ID_LEN} are taken"
        )))
    }
}

fn vehicle_id(raw: &serde_json::Number) -> Result<VehicleId, Rejection> {
    raw.as_i64()
        .and_then(|id| VehicleId::from_i64(id).ok())
        .ok_or_else(|| {
            Rejection::new(format!(
                "vehicleId: {raw} is not an integer from 1 to {}",
                VehicleId::MAX
            ))
        })
}

/// A make or model: 1 to [`MAX_NAME_LEN`] characters, not blank, no NUL (which PostgreSQL's
/// text cannot hold: such a row would fail its whole batch on every redelivery).
fn name(field: &str, raw: String) -> Result<String, Rejection> {
    let len = raw.chars().count();
    if raw.trim().is_empty() || len > MAX_NAME_LEN || raw.contains('\0') {
        return Err(Rejection::new(format!(
            "{field}: 1 to {MAX_NAME_LEN} characters, not blank, without NUL"
        )));
    }
    Ok(raw)
}

/// At most 64 characters of a rejected value, for a reason that stays one short line.
fn truncated(raw: &str) -> String {
    if raw.chars().count() <= 64 {
        raw.to_owned()
    } else {
        let mut cut: String = raw.chars().take(64).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(json: &str) -> Result<Event, Rejection> {
        Event::parse(EventKind::StateChanged, json.as_bytes())
    }

    #[test]
    fn a_state_change_takes_every_instant_form_of_the_api() {
        let expected = Timestamp::parse("2022-09-11T23:21:38Z").expect("instant");
        for ts in [
            r#""2022-09-11T23:21:38Z""#,
            r#""2022-09-12 01:21:38+02""#,
            r#""1662938498""#,
            "1662938498",
        ] {
            let json =
                format!(r#"{{"eventId":"e1","vehicleId":3,"state":"selling","timestamp":{ts}}}"#);
            let Ok(Event::StateChanged(c)) = change(&json) else {
                panic!("{json}");
            };
            assert_eq!(
                (c.vehicle.get(), c.state, c.at),
                (3, VehicleState::Selling, expected)
            );
        }
    }

    #[test]
    fn a_registration_is_parsed_and_unknown_fields_are_ignored() {
        let event = Event::parse(
            EventKind::Registered,
            br#"{"eventId":"r1","vehicleId":7,"make":"VW","model":"GOLF","colour":"red"}"#,
        )
        .expect("valid");
        assert_eq!(
            event,
            Event::Registered(Registration {
                vehicle: VehicleId::from_i64(7).expect("id"),
                make: "VW".into(),
                model: "GOLF".into(),
            })
        );
    }

    #[test]
    fn poison_is_rejected_with_a_reason_naming_the_field() {
        let ok = r#""eventId":"e","vehicleId":3,"state":"sold","timestamp":"2022-09-11T23:21:38Z""#;
        for (json, reason) in [
            ("not json".to_owned(), "not an event"),
            ("[]".to_owned(), "not an event"),
            (format!("{{{ok}}} trailing"), "not an event"),
            (
                r#"{"eventId":"e","vehicleId":3,"timestamp":"2022-09-11T23:21:38Z"}"#.to_owned(),
                "missing field `state`",
            ),
            (
                format!("{{{}}}", ok.replace(r#""sold""#, r#""scrapped""#)),
                "state: \"scrapped\" is not a state",
            ),
            (
                format!("{{{}}}", ok.replace("2022-09-11T23:21:38Z", "yesterday")),
                "timestamp: \"yesterday\"",
            ),
            (
                format!("{{{}}}", ok.replace(r#""vehicleId":3"#, r#""vehicleId":0"#)),
                "vehicleId: 0 is not an integer from 1 to 2147483647",
            ),
            (
                format!(
                    "{{{}}}",
                    ok.replace(r#""vehicleId":3"#, r#""vehicleId":2147483648"#)
                ),
                "vehicleId: 2147483648",
            ),
            (
                format!(
                    "{{{}}}",
                    ok.replace(r#""vehicleId":3"#, r#""vehicleId":3.5"#)
                ),
                "vehicleId: 3.5",
            ),
            (
                format!(
                    "{{{}}}",
                    ok.replace(r#""vehicleId":3"#, r#""vehicleId":"3""#)
                ),
                "vehicleId: invalid type",
            ),
            (
                format!("{{{}}}", ok.replace(r#""eventId":"e""#, r#""eventId":"""#)),
                "eventId: 0 characters",
            ),
        ] {
            let rejection = change(&json).expect_err(&json);
            assert!(rejection.0.starts_with(reason), "{json}: {rejection}");
        }
        let blank = Event::parse(
            EventKind::Registered,
            br#"{"eventId":"r","vehicleId":1,"make":" ","model":"GOLF"}"#,
        );
        assert!(blank.expect_err("blank").0.starts_with("make:"));
        let nul = Event::parse(
            EventKind::Registered,
            br#"{"eventId":"r","vehicleId":1,"make":"VW","model":"GO\u0000LF"}"#,
        );
        assert!(nul.expect_err("NUL").0.starts_with("model:"));
    }
}
