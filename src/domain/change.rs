//! An announcement on the change feed: one committed change to one vehicle (a state change or
//! its registration), with the vehicle as the change left it. `ingest` writes them; replicas
//! read the version to know what to drop, and pass the rest on to watchers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Timestamp, Vehicle};

/// A change committed to one vehicle, as announced on the change feed and streamed to watchers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Announcement {
    #[schema(example = 3)]
    pub vehicle_id: i32,
    /// The vehicle's version after the change: it rises with every batch that stores something
    /// new about the vehicle. Two announcements of one change carry the same version.
    #[schema(example = 7)]
    pub version: u64,
    /// What was committed.
    pub change: Change,
    /// The vehicle as the change left it; null while no registration of it is stored.
    pub vehicle: Option<Vehicle>,
    /// Its state now: that of its latest state change, whenever the change announced happened
    /// (null: none yet).
    #[schema(example = "sold")]
    pub state: Option<String>,
    /// When it entered `state` (RFC 3339, UTC).
    #[schema(value_type = Option<String>, format = DateTime, example = "2022-09-12T12:41:41Z")]
    pub state_since: Option<Timestamp>,
}

/// What one event committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A state change, at its own instant (which may be earlier than the current state's).
    StateChanged {
        #[schema(example = "sold")]
        state: String,
        #[schema(value_type = String, format = DateTime, example = "2022-09-12T12:41:41Z")]
        timestamp: Timestamp,
    },
    /// The vehicle's registration.
    Registered {
        #[schema(example = "VW")]
        make: String,
        #[schema(example = "GOLF")]
        model: String,
    },
}

/// What a stream of changes starts with, one per vehicle: the vehicle as it is, before any
/// change that follows on the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    #[schema(example = 3)]
    pub vehicle_id: i32,
    /// The vehicle's version now (0: nothing stored about it).
    #[schema(example = 7)]
    pub version: u64,
    /// The vehicle; null while no registration of it is stored.
    pub vehicle: Option<Vehicle>,
    /// Its state now: that of its latest state change (null: none yet).
    #[schema(example = "sold")]
    pub state: Option<String>,
    /// When it entered `state` (RFC 3339, UTC).
    #[schema(value_type = Option<String>, format = DateTime, example = "2022-09-12T12:41:41Z")]
    pub state_since: Option<Timestamp>,
    /// Why a snapshot: `start`, a stream's first events; `expired`, a reconnection whose
    /// `Last-Event-ID` is older than the feed keeps (or further behind than
    /// `CHANGES_REPLAY_MAX`), so the changes in between cannot be replayed.
    pub reason: SnapshotReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotReason {
    Start,
    Expired,
}

/// The part of an announcement a replica needs to drop what it holds: read without the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Versioned {
    pub vehicle_id: i32,
    pub version: u64,
    /// When the change took effect (none for a registration): what the fleet's counts at that
    /// instant and later no longer hold.
    #[serde(default)]
    pub change: Option<ChangeInstant>,
}

/// The instant of an announced change, read without the rest of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ChangeInstant {
    #[serde(default)]
    pub timestamp: Option<Timestamp>,
}

impl Announcement {
    /// The JetStream message id of this announcement (`Nats-Msg-Id`): the same for every
    /// announcement of the same change, so the stream drops one made again within its
    /// duplicate window (an event delivered again after its batch committed).
    pub fn message_id(&self) -> String {
        match &self.change {
            Change::StateChanged { state, timestamp } => {
                // The state is text as published: hashed, so the id stays one short token.
                let hash = state.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
                });
                format!(
                    "{}.state_changed.{}.{hash:016x}",
                    self.vehicle_id,
                    timestamp.unix_micros()
                )
            }
            Change::Registered { .. } => format!("{}.registered", self.vehicle_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sold(state: &str) -> Announcement {
        Announcement {
            vehicle_id: 3,
            version: 7,
            change: Change::StateChanged {
                state: state.to_owned(),
                timestamp: Timestamp::parse("2022-09-12T12:41:41Z").expect("an instant"),
            },
            vehicle: Some(Vehicle {
                id: 3,
                make: "VW".into(),
                model: "GOLF".into(),
            }),
            state: Some("sold".into()),
            state_since: Timestamp::parse("2022-09-12T12:41:41Z").ok(),
        }
    }

    #[test]
    fn an_announcement_reads_as_the_api_spells_things_and_its_version_reads_back() {
        let json = serde_json::to_string(&sold("sold")).expect("serialises");

        assert_eq!(
            json,
            r#"{"vehicleId":3,"version":7,"change":{"kind":"state_changed","state":"sold","timestamp":"2022-09-12T12:41:41Z"},"vehicle":{"id":3,"make":"VW","model":"GOLF"},"state":"sold","stateSince":"2022-09-12T12:41:41Z"}"#
        );
        let versioned: Versioned = serde_json::from_str(&json).expect("reads back");
        assert_eq!(
            versioned,
            Versioned {
                vehicle_id: 3,
                version: 7,
                change: Some(ChangeInstant {
                    timestamp: Timestamp::parse("2022-09-12T12:41:41Z").ok()
                }),
            }
        );
        let registered: Versioned = serde_json::from_str(
            r#"{"vehicleId":3,"version":1,"change":{"kind":"registered","make":"VW","model":"GOLF"}}"#,
        )
        .expect("reads");
        assert_eq!(registered.change, Some(ChangeInstant { timestamp: None }));
    }

    #[test]
    fn one_change_has_one_message_id_and_another_change_another() {
        assert_eq!(sold("sold").message_id(), sold("sold").message_id());
        assert_ne!(sold("sold").message_id(), sold("selling").message_id());
        assert!(
            sold("a b\nc")
                .message_id()
                .bytes()
                .all(|b| b.is_ascii_graphic())
        );
        let registered = Announcement {
            change: Change::Registered {
                make: "VW".into(),
                model: "GOLF".into(),
            },
            ..sold("sold")
        };
        assert_eq!(registered.message_id(), "3.registered");
    }
}
