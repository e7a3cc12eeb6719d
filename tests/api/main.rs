//! The service over HTTP, against real PostgreSQL and Redis (see `vehicle_state_test_support::servers`
//! for where they come from). One binary, so the servers are resolved once and tests run in parallel.

mod batch;
mod browsers;
mod cache;
mod cli;
mod conditional;
mod errors;
mod gathering;
mod health;
mod history;
mod layout;
mod limits;
mod lookup;
mod openapi;
mod outages;
mod process;
