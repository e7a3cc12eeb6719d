//! The PostgreSQL lookup series.

/// How many (vehicle, instant) pairs each lookup statement answered.
pub const DB_BATCH_SIZE: &str = "vehicle_state_db_batch_size";
/// PostgreSQL lookups that failed, by kind: `acquire_timeout` (no connection in time: the pool is
/// busy or PostgreSQL unreachable), `statement_timeout`, `unavailable` (connection lost, server
/// shutting down), `query` (a defect).
pub const DB_ERRORS: &str = "vehicle_state_db_errors_total";
/// Statements that counted the fleet (a count, or the points of a series not in memory), by where from: `sums` (`fleet_sums`, a few index
/// range scans) or `table` (the plain rule over `"stateLogs"`, while the sums are inexact: run
/// `rebuild-fleet`).
pub const FLEET_COUNTS: &str = "vehicle_state_fleet_counts_total";
