use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Timestamp;

/// The vehicle as recorded in `vehicles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Vehicle {
    #[schema(example = 3, minimum = 1, maximum = 2147483647)]
    pub id: i32,
    #[schema(example = "VW")]
    pub make: String,
    #[schema(example = "GOLF")]
    pub model: String,
}

/// Which state a vehicle was in at the instant asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateAnswer {
    pub vehicle: Vehicle,
    /// The state of the latest state change at or before `timestamp`. The lifecycle states are
    /// `quoted`, `selling` and `sold`; the text is passed on as stored.
    #[schema(example = "selling")]
    pub state: String,
    /// When the vehicle entered `state`: the time of the state change that gave it (RFC 3339, UTC).
    #[schema(value_type = String, format = DateTime, example = "2022-09-11T23:21:38Z")]
    #[serde(with = "rfc3339_utc")]
    pub state_since: DateTime<Utc>,
    /// Until when this answer holds: the time of the vehicle's next state change after
    /// `timestamp` (exclusive; RFC 3339, UTC), or null while `state` is current. Every instant
    /// from `stateSince` up to `until` has this same answer.
    #[schema(value_type = Option<String>, format = DateTime, required = true, example = "2022-09-12T12:41:41Z")]
    #[serde(with = "rfc3339_utc_option")]
    pub until: Option<DateTime<Utc>>,
    /// The instant asked for, normalised to UTC and truncated to microseconds (RFC 3339).
    #[schema(value_type = String, format = DateTime, example = "2022-09-12T10:00:00Z")]
    pub timestamp: Timestamp,
}

/// The three outcomes of one lookup. All three are answers (and all three are cached): only a
/// failure to ask is an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lookup {
    Found(StateAnswer),
    UnknownVehicle,
    /// The vehicle exists, but its first state change is after the instant asked for: `until`
    /// that change (null: it has none).
    NoStateYet {
        #[serde(with = "rfc3339_utc_option")]
        until: Option<DateTime<Utc>>,
    },
}

/// Which of the three outcomes a lookup had, without the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Found,
    UnknownVehicle,
    NoStateYet,
}

/// What a lookup's answer is for every instant of its segment: the answer without the instant
/// asked, and the segment, in microseconds since the Unix epoch (`None`: unbounded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub outcome: Outcome,
    /// For `Found`, the answer as JSON without `timestamp` (added per request, as its last
    /// member); empty for the others, whose bodies are problems made per request.
    pub body: Vec<u8>,
    pub start_us: Option<i64>,
    pub end_us: Option<i64>,
}

/// [`StateAnswer`] as it is for every instant of its segment: the same members in the same
/// order and spelling, without `timestamp`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Held<'a> {
    vehicle: &'a Vehicle,
    state: &'a str,
    #[serde(with = "rfc3339_utc")]
    state_since: &'a DateTime<Utc>,
    #[serde(with = "rfc3339_utc_option")]
    until: &'a Option<DateTime<Utc>>,
}

impl Lookup {
    /// The segment this answer holds for, with its body rendered once, so that every later hit
    /// serves these bytes (and the instant it asked).
    pub fn render(&self) -> Segment {
        let micros = |t: &DateTime<Utc>| t.timestamp_micros();
        match self {
            Lookup::Found(answer) => Segment {
                outcome: Outcome::Found,
                // A struct of strings, integers and timestamps always serialises.
                body: serde_json::to_vec(&Held {
                    vehicle: &answer.vehicle,
                    state: &answer.state,
                    state_since: &answer.state_since,
                    until: &answer.until,
                })
                .unwrap_or_default(),
                start_us: Some(micros(&answer.state_since)),
                end_us: answer.until.as_ref().map(micros),
            },
            Lookup::UnknownVehicle => Segment {
                outcome: Outcome::UnknownVehicle,
                body: Vec::new(),
                start_us: None,
                end_us: None,
            },
            Lookup::NoStateYet { until } => Segment {
                outcome: Outcome::NoStateYet,
                body: Vec::new(),
                start_us: None,
                end_us: until.as_ref().map(micros),
            },
        }
    }
}

/// Same spelling as [`Timestamp`]'s: `Z`, and only the fraction digits needed.
mod rfc3339_utc {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::trivially_copy_pass_by_ref)]
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// As [`rfc3339_utc`], for an instant that may be absent (`null`).
mod rfc3339_utc_option {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339_utc::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let raw = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        raw.map(|raw| {
            DateTime::parse_from_rfc3339(&raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_serialises_in_the_documented_shape() {
        let answer = StateAnswer {
            vehicle: Vehicle {
                id: 3,
                make: "VW".into(),
                model: "GOLF".into(),
            },
            state: "selling".into(),
            state_since: "2022-09-11T23:21:38Z".parse().expect("valid"),
            until: Some("2022-09-12T12:41:41Z".parse().expect("valid")),
            timestamp: Timestamp::parse("2022-09-12 10:00:00+00").expect("valid"),
        };
        let json = serde_json::to_string(&answer).expect("serialises");
        assert_eq!(
            json,
            r#"{"vehicle":{"id":3,"make":"VW","model":"GOLF"},"state":"selling","stateSince":"2022-09-11T23:21:38Z","until":"2022-09-12T12:41:41Z","timestamp":"2022-09-12T10:00:00Z"}"#
        );
        let back: StateAnswer = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, answer);
        let current = StateAnswer {
            until: None,
            ..answer
        };
        let json = serde_json::to_string(&current).expect("serialises");
        assert!(json.contains(r#""until":null,"#), "{json}");
        assert_eq!(
            serde_json::from_str::<StateAnswer>(&json).expect("parses"),
            current
        );
    }

    #[test]
    fn every_outcome_round_trips_through_json() {
        for lookup in [
            Lookup::UnknownVehicle,
            Lookup::NoStateYet { until: None },
            Lookup::NoStateYet {
                until: Some("2022-09-12T12:41:41Z".parse().expect("valid")),
            },
        ] {
            let json = serde_json::to_vec(&lookup).expect("serialises");
            assert_eq!(
                serde_json::from_slice::<Lookup>(&json).expect("parses"),
                lookup
            );
        }
    }
}
