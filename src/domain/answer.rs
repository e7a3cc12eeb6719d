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
    /// The vehicle exists, but its first state change is after the instant asked for.
    NoStateYet,
}

/// Which of the three outcomes a lookup had, without the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Found,
    UnknownVehicle,
    NoStateYet,
}

impl Lookup {
    /// The outcome, and for `Found` the response body (the answer as JSON), rendered once so that
    /// every later hit serves these bytes as they are.
    pub fn render(&self) -> (Outcome, Vec<u8>) {
        match self {
            // A struct of strings, integers and timestamps always serialises.
            Lookup::Found(answer) => (
                Outcome::Found,
                serde_json::to_vec(answer).unwrap_or_default(),
            ),
            Lookup::UnknownVehicle => (Outcome::UnknownVehicle, Vec::new()),
            Lookup::NoStateYet => (Outcome::NoStateYet, Vec::new()),
        }
    }
}

/// Same spelling as [`Timestamp`]'s: `Z`, and only the fraction digits needed.
mod rfc3339_utc {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

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
            timestamp: Timestamp::parse("2022-09-12 10:00:00+00").expect("valid"),
        };
        let json = serde_json::to_string(&answer).expect("serialises");
        assert_eq!(
            json,
            r#"{"vehicle":{"id":3,"make":"VW","model":"GOLF"},"state":"selling","stateSince":"2022-09-11T23:21:38Z","timestamp":"2022-09-12T10:00:00Z"}"#
        );
        let back: StateAnswer = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, answer);
    }

    #[test]
    fn every_outcome_round_trips_through_json() {
        for lookup in [Lookup::UnknownVehicle, Lookup::NoStateYet] {
            let json = serde_json::to_vec(&lookup).expect("serialises");
            assert_eq!(
                serde_json::from_slice::<Lookup>(&json).expect("parses"),
                lookup
            );
        }
    }
}
