//! The service over HTTP, against real PostgreSQL and Redis (see `vehicle_state_test_support::servers`
//! for where they come from). One binary, so the servers are resolved once and tests run in parallel.

// Test code: a failed assumption is a failed test (Cargo.toml denies these outside tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod auth;
mod batch;
mod browsers;
mod cache;
mod cli;
mod conditional;
mod errors;
mod fleet;
mod gathering;
mod health;
mod history;
mod intervals;
mod layout;
mod limits;
mod lookup;
mod openapi;
mod outages;
mod process;
mod quotas;
mod tokens;
mod versions;
