//! Types shared by every layer. Raw request text becomes one of these once, at the edge.

mod answer;
pub mod change;
pub mod event;
pub mod fleet;
mod hex;
pub mod history;
mod timestamp;
mod vehicle_id;

pub use answer::{Lookup, Outcome, Segment, StateAnswer, Vehicle};
pub use timestamp::{Timestamp, TimestampError};
pub use vehicle_id::{VehicleId, VehicleIdError};
