//! The network's bad days between the service and each dependency: added latency, lost packets,
//! and black holes (packets dropped without a reset), made by the tests themselves on test hosts
//! of their own (network namespaces joined by veth pairs, `vehicle_state_test_support::netns`), under closed-loop load on
//! the real binary.
//!
//! Each test names the bound it holds (how long any request may wait, given the configured
//! timeouts; how soon the service recovers after the link heals) and prints what it measured:
//! `cargo test --test network -- --nocapture`. Tests take turns (each loads the machine) and
//! each is bounded in time.
//!
//! Needs root (namespaces, links, netfilter rules), iproute2 and iptables (Debian packages
//! `iproute2`, `iptables`; `.ci/run` installs them), besides what the `faults` suite needs. A
//! machine where namespaces cannot be made fails these tests, saying so: none passes by
//! skipping.

// Test code: a failed assumption is a failed test (Cargo.toml denies these outside tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod postgres;
mod redis;
mod scenario;
mod sentinel;
