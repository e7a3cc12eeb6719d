//! Events from the broker: a vehicle registered, a vehicle's state changed. Raw bytes become an
//! [`Event`] here, once; anything else becomes a [`Rejection`] that says why, for the dead letter.

mod parse;

use super::{Timestamp, VehicleId};

/// The longest `eventId`, `make` or `model` taken.
pub const MAX_EVENT_ID_LEN: usize = 128;
pub const MAX_NAME_LEN: usize = 100;

/// What an event's subject says it is: the part after the subject prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `<prefix>.registered`
    Registered,
    /// `<prefix>.state_changed`
    StateChanged,
}

impl EventKind {
    pub const ALL: [EventKind; 2] = [EventKind::Registered, EventKind::StateChanged];

    /// The last token of the subject.
    pub fn token(self) -> &'static str {
        match self {
            EventKind::Registered => "registered",
            EventKind::StateChanged => "state_changed",
        }
    }

    /// The kind of the subject `<prefix>.<token>`, if it is one.
    pub fn of_subject(prefix: &str, subject: &str) -> Option<Self> {
        let token = subject.strip_prefix(prefix)?.strip_prefix('.')?;
        Self::ALL.into_iter().find(|kind| kind.token() == token)
    }
}

/// A vehicle's state, in lifecycle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VehicleState {
    Quoted,
    Selling,
    Sold,
}

impl VehicleState {
    pub fn as_str(self) -> &'static str {
        match self {
            VehicleState::Quoted => "quoted",
            VehicleState::Selling => "selling",
            VehicleState::Sold => "sold",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "quoted" => Some(VehicleState::Quoted),
            "selling" => Some(VehicleState::Selling),
            "sold" => Some(VehicleState::Sold),
            _ => None,
        }
    }
}

/// `vehicles.registered`: a vehicle and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub vehicle: VehicleId,
    pub make: String,
    pub model: String,
}

/// `vehicles.state_changed`: a vehicle entered `state` at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    pub vehicle: VehicleId,
    pub state: VehicleState,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Registered(Registration),
    StateChanged(StateChange),
}

/// Why an event cannot be applied, ever: it is dead-lettered with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

impl Rejection {
    fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

impl Event {
    pub fn vehicle(&self) -> VehicleId {
        match self {
            Event::Registered(r) => r.vehicle,
            Event::StateChanged(c) => c.vehicle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_their_kind() {
        assert_eq!(
            EventKind::of_subject("vehicles", "vehicles.registered"),
            Some(EventKind::Registered)
        );
        assert_eq!(
            EventKind::of_subject("vehicles", "vehicles.state_changed"),
            Some(EventKind::StateChanged)
        );
        assert_eq!(EventKind::of_subject("vehicles", "vehicles.sold"), None);
        assert_eq!(
            EventKind::of_subject("vehicles", "vehiclesregistered"),
            None
        );
        assert_eq!(EventKind::of_subject("vehicles", "other.registered"), None);
    }
}
