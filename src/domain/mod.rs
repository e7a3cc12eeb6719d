//! Types shared by every layer. Raw request text becomes one of these once, at the edge.

mod answer;
pub mod event;
pub mod history;
mod instant;
mod vehicle_id;

pub use answer::{Lookup, Outcome, StateAnswer, Vehicle};
pub use instant::{Instant, InstantError};
pub use vehicle_id::{VehicleId, VehicleIdError};
