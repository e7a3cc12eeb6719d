//! The manual cannot drift from the code: its examples are run against a live server, every
//! setting the commands take is documented with the default they print, and every relative link
//! resolves.

// Test code: a failed assumption is a failed test (Cargo.toml denies these outside tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod examples;
mod links;
mod markdown;
mod settings;
