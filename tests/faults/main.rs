//! Faults, overload and failover with real processes: the service's own binary as replicas,
//! nginx in front of them (configured from `deploy/nginx.conf`), and a Redis and a PostgreSQL of
//! the suite's own where a test stops them (the shared servers other tests use stay up).
//!
//! Tests here run one at a time (each loads the machine on purpose) and each is bounded in time.
//! Run with `cargo test --test faults -- --nocapture` to see the figures each one measures.
//!
//! Needs, besides what the `api` suite needs: nginx, redis-server and PostgreSQL's server
//! programs (initdb, pg_ctl) on this machine (Debian packages nginx-light, redis-server,
//! postgresql); `.ci/run` installs nginx when it is missing.

// Test code: a failed assumption is a failed test (Cargo.toml denies these outside tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod attacks;
mod balancer;
mod dependencies;
mod overload;
mod postgres;
mod redis_topologies;
