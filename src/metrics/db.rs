//! The PostgreSQL lookup series.

/// How many (vehicle, instant) pairs each lookup statement answered.
pub const DB_BATCH_SIZE: &str = "vehicle_state_db_batch_size";
/// PostgreSQL lookups that failed, by kind: `acquire_timeout` (no connection in time: the pool is
/// busy or PostgreSQL unreachable), `statement_timeout`, `unavailable` (connection lost, server
/// shutting down), `query` (a defect).
pub const DB_ERRORS: &str = "vehicle_state_db_errors_total";
