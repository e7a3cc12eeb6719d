//! The service over HTTP, against real PostgreSQL and Redis (see `helpers` for where they come
//! from). One binary, so the servers are resolved once and tests run in parallel.

mod batch;
mod browsers;
mod cache;
mod chaos;
mod cli;
mod conditional;
mod errors;
mod gathering;
mod health;
mod helpers;
mod history;
mod layout;
mod limits;
mod lookup;
mod openapi;
mod outages;
mod process;
